"""`ragqa mcp`: the MCP tools through a real client session (the SDK's stdio client spawning
`python -m api.cli mcp` on a tiny workspace), and the tools' checks in-process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.server.mcpserver.exceptions import ToolError

from api.factory import RagStack
from api.mcp_server import build_server
from api.settings import Settings
from tests.conftest import ROOT

DOCS = {
    "paris.txt": "Paris is the capital and largest city of France. The Eiffel Tower stands on the Champ de Mars.",
    "tides.md": "# Tides\n\nTides are the rise and fall of sea levels caused by the gravity of the Moon and the Sun.",
}


def tiny_settings(home: Path, st_model: Path, llm: Path) -> Settings:
    s = Settings(home=home)
    s.ingest.embedder.model = str(st_model)
    s.generator.model = str(llm)
    return s


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_st_model, tiny_llm) -> Path:
    """A workspace with one collection ``docs`` of two small files, embedded by the tiny embedder."""
    root = tmp_path_factory.mktemp("mcp")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    home = root / "home"
    report = RagStack(tiny_settings(home, tiny_st_model, tiny_llm)).workspace.ingest([corpus], "docs")
    assert report.chunks >= 2 and not report.failed
    return home


def server_params(home: Path, st_model: Path, llm: Path) -> StdioServerParameters:
    env = {
        "RAGQA_HOME": str(home),
        "RAGQA_INGEST__EMBEDDER__MODEL": str(st_model),
        "RAGQA_GENERATOR__MODEL": str(llm),
        "RAGQA_QA__MAX_NEW_TOKENS": "4",
        "RAGQA_SERVER__MAX_K": "8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    return StdioServerParameters(command=sys.executable, args=["-m", "api.cli", "mcp"], env=env, cwd=ROOT)


def text_of(result) -> str:
    return " ".join(block.text for block in result.content if block.type == "text")


async def client_session_run(params: StdioServerParameters, errlog) -> dict:
    """One real session: initialize, list the tools, call each; returns what the test checks."""
    seen: dict = {}
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        seen["server"] = init.server_info.name
        seen["tools"] = {t.name: t for t in (await session.list_tools()).tools}
        seen["collections"] = await session.call_tool("list_collections", {})
        seen["search"] = await session.call_tool("search", {"collection": "docs", "query": "capital of France", "k": 2})
        seen["unknown"] = await session.call_tool("search", {"collection": "nope", "query": "x"})
        seen["path"] = await session.call_tool("ask", {"collection": "../docs", "question": "x"})
        seen["k_too_big"] = await session.call_tool("search", {"collection": "docs", "query": "x", "k": 9})
        seen["empty"] = await session.call_tool("search", {"collection": "docs", "query": "   "})
        seen["ask"] = await session.call_tool(
            "ask", {"collection": "docs", "question": "What is the capital of France?", "k": 1, "mode": "stuff"}
        )
        seen["bad_mode"] = await session.call_tool("ask", {"collection": "docs", "question": "x", "mode": "magic"})
    return seen


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_tools_through_a_stdio_client_session(workspace, tiny_st_model, tiny_llm, tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "w+") as errlog:
        try:
            seen = asyncio.run(client_session_run(server_params(workspace, tiny_st_model, tiny_llm), errlog))
        except BaseException:
            errlog.seek(0)
            print(errlog.read(), file=sys.stderr)  # the server's stderr, for the failure report
            raise

    assert seen["server"] == "ragqa"
    tools = seen["tools"]
    assert set(tools) == {"list_collections", "search", "ask"}
    search_k = tools["search"].input_schema["properties"]["k"]
    assert (search_k["minimum"], search_k["maximum"]) == (1, 8)  # the server's max_k from the environment
    ask_props = tools["ask"].input_schema["properties"]
    assert set(ask_props) == {"collection", "question", "mode", "k", "adapter", "style"}
    assert tools["ask"].input_schema["required"] == ["collection", "question"]
    assert all(t.annotations.read_only_hint for t in tools.values())
    assert tools["ask"].output_schema["properties"]["citations"]

    listing = seen["collections"].structured_content["collections"]
    assert [(c["name"], c["documents"]) for c in listing] == [("docs", 2)]

    found = seen["search"]
    assert not found.is_error
    hits = found.structured_content["hits"]
    assert len(hits) == 2 and [h["rank"] for h in hits] == [1, 2]
    assert {h["title"] for h in hits} <= {"paris", "tides", "Tides"} and all(h["text"] for h in hits)
    assert {Path(h["source"]).name for h in hits} == set(DOCS)
    assert hits[0]["score"] >= hits[1]["score"]
    assert json.loads(text_of(found)) == found.structured_content  # unstructured clients get the same JSON

    for key in ("unknown", "path"):
        assert seen[key].is_error
        message = text_of(seen[key])
        assert "unknown collection" in message and "available collections: docs" in message
    assert seen["k_too_big"].is_error and "k" in text_of(seen["k_too_big"])
    assert seen["empty"].is_error and "the query is empty" in text_of(seen["empty"])
    assert seen["bad_mode"].is_error and "mode" in text_of(seen["bad_mode"])

    asked = seen["ask"]
    assert not asked.is_error, text_of(asked)
    ans = asked.structured_content
    assert ans["collection"] == "docs" and ans["mode"] == "stuff" and isinstance(ans["abstained"], bool)
    assert ans["question"] == "What is the capital of France?" and isinstance(ans["answer"], str)
    assert len(ans["citations"]) == 1
    cite = ans["citations"][0]
    assert cite["index"] == 1 and Path(cite["source"]).name in DOCS and cite["text"]
    assert set(cite) >= {"index", "title", "source", "score", "contribution", "text"}


class TestRagToolsChecks:
    """The checks that need no model: an empty workspace, calls straight into the server object."""

    @pytest.fixture()
    def server(self, home):
        settings = Settings(home=home)
        settings.server.max_k = 4
        return build_server(RagStack(settings))

    def call(self, server, name: str, args: dict):
        return asyncio.run(server.call_tool(name, args))

    def test_unknown_collection_names_the_remedy_and_never_a_path(self, server, home):
        (home / "collections" / "escape").mkdir(parents=True)  # a folder that is not a collection
        for name in ("nope", "../escape", "/etc", "escape"):
            with pytest.raises(ToolError, match="unknown collection .*available collections: none yet"):
                self.call(server, "search", {"collection": name, "query": "x"})

    def test_bounds_come_from_the_settings(self, server):
        tools = {t.name: t for t in asyncio.run(server.list_tools())}
        assert tools["search"].input_schema["properties"]["k"]["maximum"] == 4
        assert tools["search"].input_schema["properties"]["k"]["default"] == 4  # min(5, max_k)
        assert tools["ask"].input_schema["properties"]["question"]["maxLength"] == 2000
        with pytest.raises(ToolError):
            self.call(server, "search", {"collection": "docs", "query": "x", "k": 5})
        with pytest.raises(ToolError):
            self.call(server, "ask", {"collection": "docs", "question": "x" * 2001})
        with pytest.raises(ToolError):
            self.call(server, "ask", {"collection": "docs", "question": "x", "style": "poem"})

    def test_list_collections_of_an_empty_workspace(self, server):
        result = self.call(server, "list_collections", {})
        assert result.structured_content == {"collections": []}
