"""Two embed runs on one local three-node cluster (starting a cluster costs more than a run): first with
the two encoder actors pinned one per worker node (each worker offers one `encoder` resource and each
actor asks for one), then, into another table, a run that loses a worker node once its first rows are
committed. Arguments: the two lakes, the two outputs, the report file; the report holds each run's summary,
which nodes offer the `encoder` resource, the node removed and the ids in each table."""

from __future__ import annotations

import sys
import threading
import time

import ray

from pipelines.embed import EmbedJob, run_embed
from tests.sample_lakes import table_ids
from tests.scripts.local_cluster import local_cluster, write_report


def main(both_lake: str, loss_lake: str, both_output: str, loss_output: str, report: str) -> None:
    with local_cluster(worker_resources={"encoder": 1}) as (cluster, workers):
        both = run_embed(EmbedJob(input=both_lake, output=both_output, actors=2, threads_per_actor=1,
                                  actor_resources={"encoder": 1}, rows_per_batch=10, rows_per_write=10,
                                  progress=False))
        encoder_nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("encoder"))
        removed: list[str] = []

        def remove_a_worker_after_first_commit() -> None:
            deadline = time.time() + 300
            while time.time() < deadline and not table_ids(loss_output):
                time.sleep(0.1)
            node = workers[0]
            removed.append(node.unique_id)
            cluster.remove_node(node, allow_graceful=False)

        killer = threading.Thread(target=remove_a_worker_after_first_commit, daemon=True)
        killer.start()
        # No `encoder` resource asked for: the actor lost with the node is replaced wherever CPUs are left.
        loss = run_embed(EmbedJob(input=loss_lake, output=loss_output, actors=2, threads_per_actor=1,
                                  rows_per_batch=10, rows_per_write=10, progress=False))
        killer.join(timeout=5)
        write_report(report, both={"summary": both, "worker_nodes": sorted(node.node_id for node in workers),
                                   "encoder_resource_nodes": encoder_nodes, "ids": table_ids(both_output)},
                     loss={"summary": loss, "removed": removed, "ids": table_ids(loss_output)})


if __name__ == "__main__":
    main(*sys.argv[1:6])
