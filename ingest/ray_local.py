"""Start and stop a loopback Ray cluster on this machine (the distributed tests and ``bench/scale.py``).

:class:`LocalRayCluster` starts a head node (``ray start --head``) and joins more nodes to it
(``ray start --address``), each with its own CPU count, its own short temp dir (Ray's unix sockets live there
and are limited to 107 bytes), only loopback addresses, no dashboard and a small object store. Each
``ray start`` runs in its own process group, which holds every process the node starts (GCS, raylet,
workers); :meth:`LocalRayCluster.stop` kills the groups whole. ``ray stop`` is never used: it stops every Ray
process of the machine, those of other clusters included.

The nodes run without Ray's token auth and usage stats (:data:`DRIVER_ENV`; a driver connecting to them must
have the same variables, see :func:`driver_env`) and start their workers at the caller's priority
(Ray's default nice 15 starves them on a machine shared with other work). A production cluster is started
with ``ray start`` as the README shows; this module is for one machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: ``ray start`` takes seconds, minutes on a machine shared with other work.
START_TIMEOUT_S = 240.0
#: Ray's floor is ~78 MB; the tests and the benchmark move little through it.
OBJECT_STORE_BYTES = 200_000_000
#: What the nodes and every driver of a loopback cluster agree on.
DRIVER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
#: The nodes' workers at the caller's priority.
NODE_ENV = {**DRIVER_ENV, "RAY_worker_niceness": "0"}


def driver_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with :data:`DRIVER_ENV`: the environment of a process that connects."""
    return {**(os.environ if base is None else base), **DRIVER_ENV}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cli() -> list[str]:
    """The ``ray`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class _Node:
    pgid: int  # the session leader's pid is the group id, also after `ray start` returns
    temp_dir: Path


class LocalRayCluster:
    """Ray nodes on this machine, on loopback only; the first :meth:`add_node` starts the head.

    Usable as a context manager (stops on exit, also after a failed start). ``env`` is the nodes' environment
    (default ``os.environ``; workers inherit it, ``PYTHONPATH`` included, so they import the caller's code).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        object_store_bytes: int = OBJECT_STORE_BYTES,
    ) -> None:
        self.env = {**(os.environ if env is None else env), **NODE_ENV}
        self.start_timeout_s = start_timeout_s
        self.object_store_bytes = object_store_bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[_Node] = []

    def add_node(self, num_cpus: int = 1, *, wait: bool = True, attempts: int = 2) -> float:
        """Start one node (the head when it is the first) with ``num_cpus`` CPUs and no GPU; with ``wait``, return
        once the cluster has all its nodes alive. Returns the seconds it took.

        A ``ray start`` that fails is killed and tried again, ``attempts`` times in all: on a loaded machine
        Ray's own start-up deadlines (30 s for a raylet to register, not configurable) can pass.
        """
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                self._start_node(num_cpus)
                break
            except RuntimeError as exc:
                if attempt == attempts:
                    raise
                logger.warning("ray start failed (attempt %d of %d), trying again: %s", attempt, attempts, exc)
                self._kill(self.nodes.pop())
        if wait:
            self.wait_for_nodes(len(self.nodes))
        return time.monotonic() - t0

    def _start_node(self, num_cpus: int) -> None:
        head = not self.nodes
        if head:
            role = ["--head", "--port", str(self.port), "--include-dashboard=false"]
            role += ["--ray-client-server-port", str(free_port())]
        else:
            role = ["--address", self.address]
        temp_dir = Path(tempfile.mkdtemp(prefix="rqh" if head else "rqw", dir="/tmp"))  # short: unix sockets
        cmd = [
            *ray_cli(),
            "start",
            *role,
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(temp_dir),
            "--object-store-memory",
            str(self.object_store_bytes),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--disable-usage-stats",
        ]
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.nodes.append(_Node(proc.pid, temp_dir))
        try:
            output, _ = proc.communicate(timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`{' '.join(cmd)}` did not return within {self.start_timeout_s:.0f} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{output[-4000:]}")

    def wait_for_nodes(self, n: int, timeout_s: float | None = None) -> None:
        """Return once ``n`` nodes are alive. Unless this process is connected already, it connects for this and
        disconnects after; :data:`DRIVER_ENV` is set in its environment (``ray.init`` reads it)."""
        import ray

        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        was_connected = ray.is_initialized()
        if not was_connected:
            os.environ.update(DRIVER_ENV)
            ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
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
            if not was_connected:
                ray.shutdown()

    def stop(self) -> None:
        """Kill every node's process group (the newest first) and remove its temp dir."""
        for node in reversed(self.nodes):
            self._kill(node)
        self.nodes = []

    @staticmethod
    def _kill(node: _Node) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(node.pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(node.pgid):
            time.sleep(0.1)
        shutil.rmtree(node.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def local_ray_cluster(
    nodes: int = 2, num_cpus: int = 1, env: Mapping[str, str] | None = None
) -> Iterator[LocalRayCluster]:
    """A running :class:`LocalRayCluster` of ``nodes`` nodes with ``num_cpus`` CPUs each, stopped on exit."""
    with LocalRayCluster(env) as cluster:
        for _ in range(nodes):
            cluster.add_node(num_cpus, wait=False)
        cluster.wait_for_nodes(nodes)
        yield cluster


__all__ = [
    "DRIVER_ENV",
    "NODE_ENV",
    "LocalRayCluster",
    "driver_env",
    "free_port",
    "local_ray_cluster",
    "ray_cli",
]
