"""`ragqa keys create|list|revoke` and the key store (hashed secrets, scoping, revocation)."""

from __future__ import annotations

import json
import sqlite3

from typer.testing import CliRunner

from api.auth import open_key_store
from api.cli import app
from api.db import server_db_path


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_keys_cli_roundtrip(home):
    runner = CliRunner()
    created = _json(runner.invoke(app, ["keys", "create", "alice", "-c", "docs", "-c", "team", "--json"]))
    secret = created["key"]
    assert secret.startswith(f"rq_{created['key_id']}_") and created["collections"] == ["docs", "team"]
    # only the hash is stored
    db = sqlite3.connect(server_db_path(home))
    stored = db.execute("SELECT secret_hash FROM api_keys").fetchall()
    db.close()
    assert len(stored) == 1 and secret.split("_", 2)[2] not in stored[0][0] and len(stored[0][0]) == 64

    store = open_key_store(home)
    key = store.verify(secret)
    assert key is not None and key.allows("docs") and not key.allows("other")
    assert store.verify(secret + "x") is None and store.verify("rq_" + created["key_id"]) is None
    store.close()

    listed = _json(runner.invoke(app, ["keys", "list", "--json"]))
    assert listed["count"] == 1 and "key" not in listed["data"][0] and listed["data"][0]["name"] == "alice"
    human = runner.invoke(app, ["keys", "list"])
    assert "alice" in human.stdout and secret not in human.stdout

    assert _json(runner.invoke(app, ["keys", "revoke", created["key_id"], "--json"]))["ok"]
    store = open_key_store(home)
    assert store.verify(secret) is None
    store.close()
    again = runner.invoke(app, ["keys", "revoke", created["key_id"]])
    assert again.exit_code == 2
    shown = runner.invoke(app, ["keys", "create", "bob"])
    assert shown.exit_code == 0 and "shown only now" in shown.stdout and "all" in shown.stdout
