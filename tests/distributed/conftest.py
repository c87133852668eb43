"""A real local Ray cluster for the distributed tests: a head node and a second node joined to it.

``ray_cluster`` (session-scoped) runs ``ray start --head`` and ``ray start --address`` as two blocking
processes, each with ``--num-cpus 1``, its own short temporary folder (Unix socket paths must stay short)
and loopback addresses only, and yields the head's address ``"127.0.0.1:PORT"``. Teardown stops both
processes (``--block`` makes each stop its own node's Ray processes when it ends), so no other Ray on
the machine is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_exe() -> str:
    exe = Path(sys.executable).with_name("ray")
    if not exe.exists():
        pytest.skip("Ray is not installed: pip install -e '.[ray]'")
    return str(exe)


def _start_node(args: list[str], temp_dir: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                _ray_exe(),
                "start",
                "--block",
                "--num-cpus",
                "1",
                "--num-gpus",
                "0",
                "--temp-dir",
                temp_dir,
                "--node-ip-address",
                "127.0.0.1",
                "--object-store-memory",
                str(100 * 1024 * 1024),
                "--disable-usage-stats",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until the head's GCS accepts connections on ``port`` (the head process exiting fails the wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray head exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not listen on port {port} in {timeout:.0f} s")


def _wait_for_nodes(address: str, n: int, procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    """Until the cluster at ``address`` has ``n`` alive nodes (a node process that exits fails the wait).

    Connects this process as a Ray driver for the wait and disconnects again."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, log in zip(procs, logs):
                if proc.poll() is not None:
                    raise RuntimeError(f"a Ray node exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            if sum(1 for node in ray.nodes() if node["Alive"]) >= n:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray cluster at {address} did not reach {n} nodes in {timeout:.0f} s")
    finally:
        ray.shutdown()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the node's own process group (start_new_session)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address ``"127.0.0.1:PORT"`` of a running 2-node local Ray cluster (1 CPU per node)."""
    _ray_exe()
    head_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    node_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    logs = [Path(head_dir) / "start.log", Path(node_dir) / "start.log"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start_node(["--head", "--port", str(port), "--include-dashboard", "false"], head_dir, logs[0]))
        _wait_for_port(port, procs[0], logs[0], timeout=120)
        procs.append(_start_node(["--address", address], node_dir, logs[1]))
        _wait_for_nodes(address, 2, procs, logs, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(node_dir, ignore_errors=True)
