"""Conversations over the REST API (TestClient, tiny models): follow-ups on /v1/ask, per-key isolation,
delete, and the message history of /v1/chat/completions."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from rag.config import ConversationConfig
from tests.api.test_app import DOC_A, DOC_B, assert_error, make_settings, sse_events, wait_job


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    home = tmp_path_factory.mktemp("conv-home")
    settings = make_settings(home, tiny_st_model, tiny_llm)
    settings.conversation = ConversationConfig(method="history", max_turns=2, max_stored_turns=3)
    store = open_key_store(home)
    _, alice = store.create("alice")
    _, bob = store.create("bob")
    store.close()
    with TestClient(create_app(settings)) as client:
        a, b = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
        assert client.post("/v1/collections", json={"name": "docs"}, headers=a).status_code == 201
        files = [("files", ("a.txt", DOC_A.encode(), "text/plain")), ("files", ("b.md", DOC_B.encode(), "text/plain"))]
        r = client.post("/v1/collections/docs/documents", files=files, headers=a)
        assert wait_job(client, r.json()["job_id"], a)["status"] == "done"
        yield client, a, b


def ask(client, headers, question, **body):
    r = client.post("/v1/ask", json={"question": question, "collection": "docs", "k": 2, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_follow_up_uses_the_history_and_is_stored(env):
    client, alice, _ = env
    first = ask(client, alice, "What is the capital of France?")
    cid = first["conversation_id"]
    assert cid and first["question"] == "What is the capital of France?"
    second = ask(client, alice, "Which river flows through it?", conversation_id=cid)
    assert second["conversation_id"] == cid and second["question"] == "Which river flows through it?"
    assert second["standalone_question"] == "What is the capital of France? Which river flows through it?"

    listed = client.get("/v1/conversations", headers=alice).json()
    assert cid in [c["conversation_id"] for c in listed["data"]] and listed["count"] >= 1
    conv = client.get(f"/v1/conversations/{cid}", headers=alice).json()
    assert conv["turns"] == 2 and conv["title"] == "What is the capital of France?" and conv["collection"] == "docs"
    assert [t["question"] for t in conv["data"]] == ["What is the capital of France?", "Which river flows through it?"]
    assert conv["data"][1]["answer_id"] == second["answer_id"] and conv["data"][1]["answer"] == second["answer"]


def test_history_and_storage_are_bounded(env):
    client, alice, _ = env
    cid = ask(client, alice, "q1 Paris?")["conversation_id"]
    for q in ("q2 Seine?", "q3 France?"):
        ask(client, alice, q, conversation_id=cid)
    last = ask(client, alice, "q4 index?", conversation_id=cid, stream=False)
    # history method, history_turns=1: only the latest previous question joins the query
    assert last["standalone_question"] == "q3 France? q4 index?"
    conv = client.get(f"/v1/conversations/{cid}", headers=alice).json()
    assert [t["question"] for t in conv["data"]] == ["q2 Seine?", "q3 France?", "q4 index?"]  # max_stored_turns 3


def test_streamed_follow_up(env):
    client, alice, _ = env
    cid = ask(client, alice, "What is HNSW?")["conversation_id"]
    r = client.post(
        "/v1/ask",
        json={"question": "Is it exact?", "collection": "docs", "conversation_id": cid, "stream": True},
        headers=alice,
    )
    events = sse_events(r.text)
    kind, answer = events[-1]
    assert kind == "answer" and answer["conversation_id"] == cid
    assert answer["standalone_question"] == "What is HNSW? Is it exact?"


def test_another_key_cannot_read_continue_or_delete(env):
    client, alice, bob = env
    cid = ask(client, alice, "What is the flat index?")["conversation_id"]
    assert_error(client.get(f"/v1/conversations/{cid}", headers=bob), 404, "conversation_not_found")
    assert_error(client.delete(f"/v1/conversations/{cid}", headers=bob), 404, "conversation_not_found")
    r = client.post(
        "/v1/ask", json={"question": "Is it exact?", "collection": "docs", "conversation_id": cid}, headers=bob
    )
    assert_error(r, 404, "conversation_not_found")
    assert cid not in [c["conversation_id"] for c in client.get("/v1/conversations", headers=bob).json()["data"]]
    assert client.get(f"/v1/conversations/{cid}", headers=alice).json()["turns"] == 1  # untouched


def test_delete(env):
    client, alice, _ = env
    cid = ask(client, alice, "What is the Seine?")["conversation_id"]
    assert client.delete(f"/v1/conversations/{cid}", headers=alice).status_code == 204
    assert_error(client.get(f"/v1/conversations/{cid}", headers=alice), 404, "conversation_not_found")
    assert_error(client.delete(f"/v1/conversations/{cid}", headers=alice), 404)
    r = client.post("/v1/ask", json={"question": "And?", "collection": "docs", "conversation_id": cid}, headers=alice)
    assert_error(r, 404, "conversation_not_found")
    assert_error(client.get("/v1/conversations/nope", headers=alice), 404)


def test_chat_completions_use_the_message_history(env):
    client, alice, _ = env
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris\n\nSources:\n[1] b (b.md)"},
        {"role": "user", "content": "Which river flows through it?"},
    ]
    r = client.post("/v1/chat/completions", json={"model": "ragqa:docs", "messages": messages}, headers=alice)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ragqa"]["standalone_question"] == "What is the capital of France? Which river flows through it?"
    one = client.post(
        "/v1/chat/completions", json={"model": "ragqa:docs", "messages": messages[-1:]}, headers=alice
    ).json()
    assert one["ragqa"]["standalone_question"] is None  # no history: the question as written
