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
