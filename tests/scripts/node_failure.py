"""Run the embed pipeline on a 3-node `ray.cluster_utils.Cluster` and remove a worker node mid-run.

Run as a script (its own Ray, apart from the test session's): writes a JSON report (the run's summary,
the node removed and the ids in the table) to the file named by its third argument, since Ray's own
log lines can reach stdout after ours.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import lance
import ray
from ray.cluster_utils import Cluster

from pipelines.embed import EmbedJob, run_embed


def committed(output: str) -> int:
    try:
        return lance.dataset(f"{output}/docs.lance").count_rows()
    except (ValueError, OSError):
        return 0


def main(lake: str, output: str, report: str) -> None:
    # The head gets enough CPUs for read and write tasks so an actor cannot starve them (ray#44687).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    removed: list[str] = []

    def remove_a_worker_after_first_commit() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and committed(output) == 0:
            time.sleep(0.1)
        node = workers[0]
        removed.append(node.unique_id)
        cluster.remove_node(node, allow_graceful=False)

    killer = threading.Thread(target=remove_a_worker_after_first_commit, daemon=True)
    killer.start()
    try:
        summary = run_embed(EmbedJob(input=lake, output=output, actors=2, threads_per_actor=1,
                                     rows_per_batch=10, rows_per_write=10, progress=False))
        killer.join(timeout=5)
        ids = lance.dataset(f"{output}/docs.lance").to_table(columns=["id"]).column("id").to_pylist()
        with open(report, "w") as handle:
            json.dump({"summary": summary, "removed": removed, "ids": ids}, handle)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
