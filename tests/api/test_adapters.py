"""GET /v1/adapters: the LoRA adapters of the workspace, with their ragqa metadata."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from tests.api.test_app import make_settings


def test_list_adapters(tmp_path, tiny_st_model, tiny_llm):
    home = tmp_path / "home"
    settings = make_settings(home, tiny_st_model, tiny_llm)
    store = open_key_store(home)
    _, key = store.create("admin")
    store.close()
    root = settings.adapters_dir
    (root / "b-lora").mkdir(parents=True)
    (root / "b-lora" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny", "r": 8}))
    (root / "b-lora" / "ragqa_adapter.json").write_text(
        json.dumps({"kind": "sft", "base_model": "tiny-llm", "steps": 10})
    )
    (root / "a-lora").mkdir()
    (root / "a-lora" / "adapter_config.json").write_text("{}")
    (root / "a-lora" / "ragqa_adapter.json").write_text("not json")  # unreadable metadata: listed without it
    (root / "not-an-adapter").mkdir()  # no adapter_config.json: ignored
    (root / ".staging-c-lora-1").mkdir()  # being written: ignored
    (root / ".staging-c-lora-1" / "adapter_config.json").write_text("{}")
    h = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings, start_worker=False)) as client:
        assert client.get("/v1/adapters").status_code == 401
        r = client.get("/v1/adapters", headers=h)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "count": 2,
            "data": [
                {"name": "a-lora", "base_model": None, "metadata": {}},
                {
                    "name": "b-lora",
                    "base_model": "tiny-llm",
                    "metadata": {"kind": "sft", "base_model": "tiny-llm", "steps": 10},
                },
            ],
        }


def test_web_ui_is_served_without_a_key(tmp_path, tiny_st_model, tiny_llm):
    settings = make_settings(tmp_path / "home", tiny_st_model, tiny_llm)
    with TestClient(create_app(settings, start_worker=False)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="static/app.js"' in page.text
        for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
            r = client.get(f"/static/{asset}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
        assert client.get("/static/nope.js").status_code == 404
        assert "/" not in client.get("/openapi.json").json()["paths"]


def test_adapter_metadata_shows_names_not_server_paths(tmp_path, tiny_st_model, tiny_llm):
    """ragqa_adapter.json and adapter_config.json record where the base model, the training data, the held-out
    split and the recipe were on the server: GET /v1/adapters shows their names only, at any depth."""
    home = tmp_path / "home"
    settings = make_settings(home, tiny_st_model, tiny_llm)
    store = open_key_store(home)
    _, key = store.create("admin")
    store.close()
    folder = settings.adapters_dir / "tuned"
    folder.mkdir(parents=True)
    base_dir = tmp_path / "models" / "my-llm"
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base_dir), "r": 8}))
    meta = {
        "kind": "sft",
        "base_model_path": str(base_dir) + "/",
        "options": {"data": str(home / "bench-data" / "sft.jsonl"), "lora": {"r": 8}, "collection": "facts"},
        "data": {"path": "/srv/private/train.jsonl", "records": 4, "files": ["/srv/a/one.jsonl", "~/two.jsonl"]},
        "heldout": {"path": f"{home.resolve()}/pipelines/p1/heldout.jsonl", "sha256": "ab12"},
        "recipe": {
            "path": "C:\\recipes\\reader.yaml",
            "text": "data: /srv/private/train.jsonl\nsource: https://example.org/a/b.json\nbase: org/model\n",
        },
        "hub_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "note": "trained on /srv/private/train.jsonl and data/local.jsonl",
    }
    (folder / "ragqa_adapter.json").write_text(json.dumps(meta))
    with TestClient(create_app(settings, start_worker=False)) as client:
        r = client.get("/v1/adapters", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    for leak in ("/srv", str(tmp_path), str(tmp_path.resolve()), "C:\\", "~/"):
        assert leak not in r.text, leak
    (entry,) = r.json()["data"]
    assert entry["base_model"] == "my-llm"
    shown = entry["metadata"]
    assert shown["base_model_path"] == "my-llm"
    assert shown["options"] == {"data": "sft.jsonl", "lora": {"r": 8}, "collection": "facts"}
    assert shown["data"] == {"path": "train.jsonl", "records": 4, "files": ["one.jsonl", "two.jsonl"]}
    assert shown["heldout"] == {"path": "heldout.jsonl", "sha256": "ab12"}
    assert shown["recipe"]["path"] == "reader.yaml"
    assert shown["recipe"]["text"] == "data: train.jsonl\nsource: https://example.org/a/b.json\nbase: org/model\n"
    assert shown["hub_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id is a name: kept
    assert shown["note"] == "trained on train.jsonl and data/local.jsonl"  # a relative name inside text: kept
    assert shown["kind"] == "sft"
