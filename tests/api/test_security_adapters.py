"""Issue 18, item 1: the ``adapter`` field names a registry adapter, never a path; a failed adapter load leaves
the shared model exactly as it was; the query-encoder cache is bounded; adapters are visible per key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from rag.config import GeneratorConfig, QAConfig
from rag.errors import InvalidAdapterError
from rag.generator import Generator
from rag.qa import QAPipeline
from tests.api.test_app import DOC_A, assert_error, make_settings, sse_events, wait_job

PROMPT = [[1, 42, 77, 300, 12, 9, 450]]


def _save_lora(base_dir: Path, folder: Path, seed: int, r: int = 4) -> None:
    """A LoRA adapter of the tiny Llama with random (non-zero) B, so it visibly changes the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=r, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(folder)


def _broken_lora(base_dir: Path, folder: Path) -> None:
    """A LoRA whose config says r=4 but whose weights have r=8: PEFT injects the layers (random B, since
    init_lora_weights is false), then fails on the shapes - the half-load the attack left in the model."""
    _save_lora(base_dir, folder, seed=7, r=8)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 4
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _logits(gen: Generator, adapter: str | None = None) -> torch.Tensor:
    with gen.session(adapter) as model, torch.no_grad():
        return model(torch.tensor(PROMPT)).logits.clone()


def _greedy(gen: Generator, steps: int = 8) -> list[int]:
    ids = list(PROMPT[0])
    with gen.session(None) as model, torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


def _structure(gen: Generator) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in gen.model.named_modules()]


@pytest.fixture()
def gen(tmp_path, tiny_llm) -> Generator:
    cfg = GeneratorConfig(model=str(tiny_llm), device="cpu", dtype="float32", int8_decode="off")
    return Generator(cfg, tmp_path / "models", tmp_path / "adapters").warm_up()


def test_a_failed_load_on_the_bare_model_leaves_it_exactly_as_it_was(gen, tiny_llm):
    _broken_lora(tiny_llm, gen.adapters_dir / "broken")
    logits, greedy, structure = _logits(gen), _greedy(gen), _structure(gen)
    with pytest.raises(InvalidAdapterError, match="does not fit"):
        _logits(gen, "broken")
    assert _structure(gen) == structure  # no LoRA wrapper left behind
    assert torch.equal(_logits(gen), logits)
    assert _greedy(gen) == greedy
    assert not hasattr(gen.model, "peft_config") and "broken" not in gen._loaded_adapters


def test_a_failed_load_next_to_a_loaded_adapter_changes_neither(gen, tiny_llm):
    _save_lora(tiny_llm, gen.adapters_dir / "good", seed=1)
    _broken_lora(tiny_llm, gen.adapters_dir / "broken")
    good = _logits(gen, "good")
    base, greedy, structure = _logits(gen), _greedy(gen), _structure(gen)
    assert not torch.equal(good, base)  # the adapter does change the model
    with pytest.raises(InvalidAdapterError):
        _logits(gen, "broken")
    assert _structure(gen) == structure
    assert list(gen.model.peft_config) == ["good"]
    assert torch.equal(_logits(gen), base) and _greedy(gen) == greedy
    assert torch.equal(_logits(gen, "good"), good)


def test_adapters_that_are_no_safe_lora_are_refused_before_loading(gen, tiny_llm):
    root = gen.adapters_dir
    (root / "uploaded").mkdir(parents=True)  # the attack: an adapter_config.json and nothing else
    (root / "uploaded" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    _save_lora(tiny_llm, root / "prompt", seed=2)
    config = json.loads((root / "prompt" / "adapter_config.json").read_text())
    (root / "prompt" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "PROMPT_TUNING"}))
    _save_lora(tiny_llm, root / "pickled", seed=3)
    (root / "pickled" / "adapter_model.safetensors").rename(root / "pickled" / "adapter_model.bin")
    structure, logits = _structure(gen), _logits(gen)
    for name, match in (("uploaded", "safetensors"), ("prompt", "not a LoRA"), ("pickled", "safetensors")):
        with pytest.raises(InvalidAdapterError, match=match):
            _logits(gen, name)
    for bad in ("/etc", "../adapters/x", str(root / "uploaded"), ".hidden", "a/b"):
        with pytest.raises(InvalidAdapterError, match="invalid adapter name"):
            _logits(gen, bad)
    assert _structure(gen) == structure and torch.equal(_logits(gen), logits)


def test_query_encoder_cache_is_bounded_and_keyed_by_the_resolved_name(tmp_path, tiny_st_model):
    gen = Generator(GeneratorConfig(model="unused"), tmp_path / "models", tmp_path / "adapters")
    for name in ("a", "b", "c"):
        folder = gen.adapters_dir / name
        shutil.copytree(tiny_st_model, folder / "query_encoder")
        (folder / "adapter_config.json").write_text("{}")
        (folder / "ragqa_adapter.json").write_text(json.dumps({"kind": "rag", "query_encoder": "query_encoder"}))
    (gen.adapters_dir / "alias").symlink_to(gen.adapters_dir / "a")  # another spelling of adapter a
    qa = QAPipeline(None, gen, QAConfig(query_encoder_cache=2))  # type: ignore[arg-type]
    first = qa.query_embedder("a")
    assert qa.query_embedder("alias") is first and qa.query_embedder("a") is first
    qa.query_embedder("b")
    qa.query_embedder("c")  # a is the least recently used: dropped
    assert list(qa._query_encoders) == ["b", "c"]
    assert qa.query_embedder("a") is not first and list(qa._query_encoders) == ["c", "a"]
    with pytest.raises(InvalidAdapterError):
        qa.query_embedder(str(gen.adapters_dir / "a"))  # a path is no name


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_st_model, tiny_llm):
    """An app with adapters 'alpha' and 'beta', an admin key and a key limited to adapter 'alpha'."""
    home = tmp_path_factory.mktemp("adapters-home")
    settings = make_settings(home, tiny_st_model, tiny_llm)
    for seed, name in enumerate(("alpha", "beta")):
        _save_lora(tiny_llm, settings.adapters_dir / name, seed=seed)
    store = open_key_store(home)
    _, admin = store.create("admin")
    _, limited = store.create("alpha-only", adapters=["alpha"])
    store.close()
    with TestClient(create_app(settings)) as client:
        h = {"Authorization": f"Bearer {admin}"}
        assert client.post("/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
        r = client.post("/v1/collections/docs/documents", files=[("files", ("a.md", DOC_A.encode()))], headers=h)
        assert wait_job(client, r.json()["job_id"], h)["status"] == "done"
        yield {"client": client, "admin": h, "limited": {"Authorization": f"Bearer {limited}"}, "home": home}


def _ask(env, headers, adapter, stream=False):
    body = {"question": "Which index is exact?", "collection": "docs", "adapter": adapter, "stream": stream}
    return env["client"].post("/v1/ask", json=body, headers=headers)


def test_a_path_as_adapter_is_refused_and_loads_nothing(api):
    uploaded = api["home"] / "uploads" / "docs"  # the attack: a folder the attacker could write into
    (uploaded / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    service = api["client"].app.state.service
    for bad in (str(uploaded), "/etc", "../uploads/docs", "..", ".hidden", "a/b", "x" * 200):
        for stream in (False, True):
            err = assert_error(_ask(api, api["admin"], bad, stream), 422, "invalid_adapter")
            assert "invalid adapter name" in err["message"]
    assert not service.qa.generator._loaded_adapters
    assert assert_error(_ask(api, api["admin"], "missing"), 404, "adapter_not_found")


def test_adapters_are_visible_per_key(api):
    c = api["client"]
    assert [a["name"] for a in c.get("/v1/adapters", headers=api["admin"]).json()["data"]] == ["alpha", "beta"]
    listing = c.get("/v1/adapters", headers=api["limited"]).json()
    assert listing == {"count": 1, "data": [listing["data"][0]]} and listing["data"][0]["name"] == "alpha"
    # another key's adapter does not exist for this key: the same answers as for a missing one
    for name in ("beta", "missing"):
        assert_error(_ask(api, api["limited"], name), 404, "adapter_not_found")
        r = _ask(api, api["limited"], name, stream=True)  # a stream reports it as its error event
        assert r.status_code == 200 and sse_events(r.text)[-1][0] == "error"
        assert sse_events(r.text)[-1][1]["error"]["code"] == "adapter_not_found"
    assert _ask(api, api["limited"], "alpha").json()["adapter"] == "alpha"
    assert _ask(api, api["admin"], "beta").json()["adapter"] == "beta"


def test_keys_cli_takes_adapters(home):
    from typer.testing import CliRunner

    from api.cli import app as cli

    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "create", "k", "--adapter", "alpha", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["adapters"] == ["alpha"]
    store = open_key_store(home)
    (key,) = store.list()
    assert key.allows_adapter("alpha") and not key.allows_adapter("beta") and key.allows("any-collection")
    store.close()
    r = runner.invoke(cli, ["keys", "create", "k2", "--adapter", "../x", "--json"])
    assert r.exit_code == 2 and "invalid adapter name" in r.stdout
