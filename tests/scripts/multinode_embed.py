"""Run the embed pipeline on a local three-node cluster whose two worker nodes each offer one `encoder`
resource, so the two encoder actors must land one on each worker. Writes a JSON report (the run's summary,
which nodes offer the `encoder` resource, the ids in the table) to the file named by its third argument."""

from __future__ import annotations

import sys

import ray

from pipelines.embed import EmbedJob, run_embed
from tests.sample_lakes import table_ids
from tests.scripts.local_cluster import local_cluster, write_report


def main(lake: str, output: str, report: str) -> None:
    with local_cluster(worker_resources={"encoder": 1}) as (_cluster, workers):
        summary = run_embed(EmbedJob(input=lake, output=output, actors=2, threads_per_actor=1,
                                     actor_resources={"encoder": 1}, rows_per_batch=10, rows_per_write=10,
                                     progress=False))
        encoder_nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("encoder"))
        write_report(report, summary=summary, worker_nodes=sorted(node.node_id for node in workers),
                     encoder_resource_nodes=encoder_nodes, ids=table_ids(output))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
