"""Run the embed pipeline on a local three-node cluster and remove a worker node once the first rows are
committed. Writes a JSON report (the run's summary, the node removed, the ids in the table) to the file
named by its third argument."""

from __future__ import annotations

import sys
import threading
import time

from pipelines.embed import EmbedJob, run_embed
from tests.sample_lakes import table_ids
from tests.scripts.local_cluster import local_cluster, write_report


def main(lake: str, output: str, report: str) -> None:
    with local_cluster() as (cluster, workers):
        removed: list[str] = []

        def remove_a_worker_after_first_commit() -> None:
            deadline = time.time() + 300
            while time.time() < deadline and not table_ids(output):
                time.sleep(0.1)
            node = workers[0]
            removed.append(node.unique_id)
            cluster.remove_node(node, allow_graceful=False)

        killer = threading.Thread(target=remove_a_worker_after_first_commit, daemon=True)
        killer.start()
        summary = run_embed(EmbedJob(input=lake, output=output, actors=2, threads_per_actor=1,
                                     rows_per_batch=10, rows_per_write=10, progress=False))
        killer.join(timeout=5)
        write_report(report, summary=summary, removed=removed, ids=table_ids(output))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
