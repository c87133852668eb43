"""A real local two-node Ray cluster for the tests of the distributed paths (``ray_cluster``).

The fixture starts a head node (``ray start --head``) and joins a second node to it (``ray start --address``),
each with one CPU, its own short temp dir (Ray's unix sockets live there and are limited to 107 bytes), only
loopback addresses, no dashboard and a small object store. It waits until both nodes are alive, yields the
cluster's address (``127.0.0.1:PORT``) and tears both nodes down afterwards, also when a test or the start
failed: each ``ray start`` runs in its own process group, which holds every process the node starts (GCS,
raylet, workers), and the whole group is killed. ``ray stop`` is never used: it stops every Ray process of the
machine, those of other clusters included.

Without Ray installed the tests are skipped, and fail when ``CI=true`` (``make install`` installs the ``ray``
extra).
"""

from __future__ import annotations

import contextlib
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

RAY_START_TIMEOUT_S = 240.0  # generous: `ray start` takes seconds, minutes on a machine shared with other work
OBJECT_STORE_BYTES = 200_000_000  # Ray's floor is ~78 MB; the tests move kilobytes


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        message = 'Ray is not installed: pip install -e ".[ray]" (make install does it)'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


class _Node:
    """One ``ray start`` node: its temp dir and its process group (killed as a whole on stop)."""

    def __init__(self, name: str) -> None:
        # Short on purpose: Ray puts unix sockets under <temp dir>/session_<date>_<pid>/sockets/.
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"rq{name}", dir="/tmp"))
        self.pgid: int | None = None

    def start(self, args: list[str], env: dict[str, str]) -> None:
        cmd = [
            *_ray_cli(),
            "start",
            *args,
            "--num-cpus",
            "1",
            "--num-gpus",
            "0",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(self.temp_dir),
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--disable-usage-stats",
        ]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.pgid = proc.pid  # the session leader's pid is the group id, also after `ray start` returns
        try:
            output, _ = proc.communicate(timeout=RAY_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"`{' '.join(cmd)}` did not return within {RAY_START_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{output[-4000:]}")

    def stop(self) -> None:
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(self.pgid):
                time.sleep(0.1)
            self.pgid = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_nodes(address: str, n: int, timeout_s: float) -> None:
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = [node for node in ray.nodes() if node.get("Alive")]
            if len(alive) >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(alive)} of {n} Ray nodes came up within {timeout_s:.0f} s")
            time.sleep(0.5)
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address (``127.0.0.1:PORT``) of a real two-node local Ray cluster, one CPU per node.

    Contract: both nodes are alive when the test starts; no driver is connected (a test calls
    ``ray.init(address=...)`` itself, or passes the address to the code under test, and should call
    ``ray.shutdown()`` when done); ``RAY_USAGE_STATS_ENABLED=0``; worker processes inherit this process's
    environment (``PYTHONPATH`` included, so they import the code under test). Both nodes are killed at the
    end of the session.
    """
    _require_ray()
    # Workers at the test's own priority (Ray's default nice 15 starves them on a busy CI machine).
    # No token auth on this loopback-only cluster, whatever ~/.ray/auth_token holds (the driver must agree).
    ray_env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, **ray_env, "RAY_worker_niceness": "0"}
    os.environ.update(ray_env)
    head, worker = _Node("h"), _Node("w")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        head.start(
            ["--head", "--port", str(port), "--include-dashboard=false", "--ray-client-server-port", str(_free_port())],
            env,
        )
        worker.start(["--address", address], env)
        _wait_for_nodes(address, 2, RAY_START_TIMEOUT_S)
        yield address
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        worker.stop()
        head.stop()
