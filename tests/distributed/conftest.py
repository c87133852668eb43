"""A real local two-node Ray cluster for the tests of the distributed paths (``ray_cluster``).

The fixture starts a head node and joins a second node to it with :class:`ingest.ray_local.LocalRayCluster`
(``ray start``, one CPU per node, its own temp dir each, loopback only, no dashboard, a small object store),
waits until both nodes are alive, yields the cluster's address (``127.0.0.1:PORT``) and kills both nodes'
process groups afterwards, also when a test or the start failed (never ``ray stop``, which would stop other
clusters of the machine too).

Without Ray installed the tests are skipped, and fail when ``CI=true`` (``make install`` installs the ``ray``
extra).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from ingest.ray_local import DRIVER_ENV, local_ray_cluster


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        message = 'Ray is not installed: pip install -e ".[ray]" (make install does it)'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address (``127.0.0.1:PORT``) of a real two-node local Ray cluster, one CPU per node.

    Contract: both nodes are alive when the test starts; no driver is connected (a test calls
    ``ray.init(address=...)`` itself, or passes the address to the code under test, and should call
    ``ray.shutdown()`` when done); ``RAY_USAGE_STATS_ENABLED=0`` and ``RAY_AUTH_MODE=disabled`` in this
    process's environment; worker processes inherit this process's environment (``PYTHONPATH`` included,
    so they import the code under test). Both nodes are killed at the end of the session.
    """
    _require_ray()
    os.environ.update(DRIVER_ENV)
    with local_ray_cluster(nodes=2, num_cpus=1) as cluster:
        try:
            yield cluster.address
        finally:
            with contextlib.suppress(Exception):
                import ray

                ray.shutdown()
