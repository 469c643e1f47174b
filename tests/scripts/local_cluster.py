"""A three-node `ray.cluster_utils.Cluster` for the scripts that run the embed job across nodes.

The head's two CPUs are for the driver and the read and write tasks, so that actors cannot starve them
(ray#44687); the two worker nodes have one CPU each (and the resources asked for). Each script runs it in
a process of its own, apart from the test session's Ray, and writes its report to a file, since Ray's own
log lines can reach stdout after ours.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster


@contextmanager
def local_cluster(worker_resources: dict[str, float] | None = None) -> Iterator[tuple[Cluster, list]]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    workers = [cluster.add_node(num_cpus=1, resources=worker_resources or {}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def write_report(path: str, **fields: object) -> None:
    with open(path, "w") as handle:
        json.dump(fields, handle)
