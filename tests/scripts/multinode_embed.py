"""Run the embed pipeline on a `ray.cluster_utils.Cluster`: a head for reads, writes and the driver,
and two worker nodes that each offer one `encoder` resource, so the two encoder actors must land
one on each worker.

Run as a script (its own Ray, apart from the test session's): prints one JSON line with the run's
summary, which nodes offer the `encoder` resource and the ids in the table.
"""

from __future__ import annotations

import json
import sys

import lance
import ray
from ray.cluster_utils import Cluster

from pipelines.embed import EmbedJob, run_embed


def main(lake: str, output: str) -> None:
    # The head's CPUs are for read and write tasks so actors cannot starve them (ray#44687).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    workers = [cluster.add_node(num_cpus=1, resources={"encoder": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        summary = run_embed(EmbedJob(input=lake, output=output, actors=2, threads_per_actor=1,
                                     actor_resources={"encoder": 1}, rows_per_batch=10, rows_per_write=10,
                                     progress=False))
        ids = lance.dataset(f"{output}/docs.lance").to_table(columns=["id"]).column("id").to_pylist()
        encoder_nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("encoder"))
        print(json.dumps({
            "summary": summary,
            "worker_nodes": sorted(node.node_id for node in workers),
            "encoder_resource_nodes": encoder_nodes,
            "ids": ids,
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
