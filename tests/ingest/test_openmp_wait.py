"""Every ragqa package sets OpenMP's passive wait (OMP_WAIT_POLICY) before torch loads, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# imports the module under test, then torch (if it did not), recording OMP_WAIT_POLICY when torch first loads
PROBE = """
import importlib, os, sys
seen = []
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Finder())
importlib.import_module(sys.argv[1])
import torch  # noqa: E402  (modules that load torch lazily: it loads later, in the same process)
print(seen[0])
"""


def _policy_when_torch_loads(module: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    out = subprocess.run([sys.executable, "-c", PROBE, module], env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["api.cli", "rag.qa", "finetune.sft", "ingest.embedder"])
def test_torch_loads_with_the_passive_wait(module: str) -> None:
    assert _policy_when_torch_loads(module) == "PASSIVE"


def test_the_users_choice_wins() -> None:
    assert _policy_when_torch_loads("rag.qa", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
