"""A real `ragqa serve` process for the end-to-end tests: its environment, an API key, and its start on a free
loopback port, health wait and stop (shared by tests/api and tests/security)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import ragqa_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home, st_model, llm, **settings: str) -> dict[str, str]:
    """The environment of a `ragqa` subprocess on workspace ``home`` with the tiny models; ``settings`` are
    more RAGQA_* variables (e.g. ``RAGQA_SERVER__MAX_UPLOAD_MB="1"``). RAGQA_* variables of the caller are dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env.update(
        {
            "RAGQA_HOME": str(home),
            "RAGQA_INGEST__EMBEDDER__MODEL": str(st_model),
            "RAGQA_GENERATOR__MODEL": str(llm),
            "RAGQA_QA__MAX_NEW_TOKENS": "4",
            **settings,
        }
    )
    return env


def create_key(env: dict[str, str], name: str, *options: str) -> str:
    """A new API key's secret, made by `ragqa keys create NAME [options] --json` (e.g. ``"-c", "docs"``)."""
    created = subprocess.run(
        ragqa_cmd() + ["keys", "create", name, *options, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    return json.loads(created.stdout.strip().splitlines()[-1])["key"]


def start_server(env: dict[str, str], port: int, log_path: Path) -> tuple[subprocess.Popen, IO[str]]:
    """Start `ragqa serve` on ``port`` (output to ``log_path``) without waiting: the process and its open log."""
    log = open(log_path, "w+")
    proc = subprocess.Popen(
        ragqa_cmd() + ["serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log


def wait_healthy(base: str, proc: subprocess.Popen, log: IO[str], timeout: float = 180) -> None:
    """Wait until ``base``/healthz answers 200; fail the test with the server's output if it exits first, or
    kill it and fail if it does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server {base} did not start in time")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen, log: IO[str]) -> None:
    """SIGTERM (then kill after 30 s) a server that still runs, and close its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


@contextmanager
def running_server(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `ragqa serve` process on a free loopback port: yields its base URL once /healthz answers 200,
    and stops it (SIGTERM, then kill) afterwards; its output goes to ``log_path``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = start_server(env, port, log_path)
    try:
        wait_healthy(base, proc, log)
        yield base, proc
    finally:
        stop_server(proc, log)
