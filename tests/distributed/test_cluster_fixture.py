"""The ``ray_cluster`` fixture gives two live nodes that run tasks."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_two_nodes_run_tasks(ray_cluster):
    import ray

    ray.init(address=ray_cluster, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2 and ray.cluster_resources()["CPU"] == 2

        @ray.remote(num_cpus=1)
        def node_of() -> str:
            import time

            time.sleep(0.5)
            return ray.get_runtime_context().get_node_id()

        assert len(set(ray.get([node_of.remote() for _ in range(4)]))) == 2
    finally:
        ray.shutdown()
