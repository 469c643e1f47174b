"""How many encoder actors, with what resources and batch sizes, for the cluster at hand.

GPU clusters: one actor per GPU, each taking two batches at once so one tokenises while the other
computes (the encoder serialises the device work itself), and big batches so each call keeps the
GPU busy for a while.

CPU-only clusters: one single-threaded actor per core beats one actor with a thread per core. The
model's matmuls scale well across threads, but tokenisation, Arrow assembly and Python run on one
thread, and two threads of one process wait on each other at every operator when a core is taken by
someone else; independent actors keep both cores busy (measured in benchmarks/RESULTS.md). Ray's
CPU counts are scheduling tokens, not pinned cores, so the actors hold all but IO_CPUS of them and
the reader and writer tasks, which mostly wait on storage, fit in what is left.

Keeping every actor fed: Ray Data hands an actor whole blocks (a reader's output for one shard is
one block), bundled up to the batch size, and queues up to `max_tasks_in_flight` of them on an actor
as soon as it is ready. On CPUs that let the first actor to finish loading its model take every
shard of a small corpus while the others sat idle; so CPU actors take one block at a time (the
queue then feeds whichever actor is free) and batches stay below a shard's size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from operators.encoders.limits import ROWS_PER_BATCH

# Logical CPUs left to reader, shuffle and writer tasks on a CPU-only cluster: a whole one, because
# Ray Data's shuffle reduce tasks ask for one CPU each and would wait forever behind the actors.
IO_CPUS = 1.0
# Each reader, decide and writer task: two at a time beside the encoders. Each task running at once is a
# worker process Ray must start and import into (~1 s of CPU); four at a time (0.25 each) started more of them
# than the reads gained on two cores (benchmarks/overhead.py).
IO_TASK_CPUS = 0.5
GPU_CONCURRENT_CALLS = 2
MAX_ROWS_PER_WRITE = 4096
# Rows per encoder call on CPUs grow with the run (the encoder still cuts its forward passes at ROWS_PER_BATCH
# rows and TOKENS_PER_BATCH tokens): each call is a Ray task, a block through the object store and an output
# block, ~ms of scheduling each, and texts sorted by length within a bigger call pad less. Every actor still
# gets CALLS_PER_ACTOR calls or more, so none waits long for the last one (benchmarks/overhead.py).
MAX_ROWS_PER_CALL = 2048
CALLS_PER_ACTOR = 8
WRITES_PER_ACTOR = 4
# The incremental decision (operators/incremental.py) runs per hash partition of ids: rows per
# partition bound the memory of one decide task (~250 bytes a row with a short text), and the number
# of partitions grows with the rows shuffled, so each task's memory does not.
ROWS_PER_PARTITION = 200_000
SHUFFLE_INPUT_BYTES = 64 * 2**20  # input a shuffle map task partitions at once
# A run scans the table's whole key column when it reads at least this fraction of the table's rows;
# below it, each read task looks its ids up through the id index (time that follows the new data).
SCAN_FRACTION = 0.05


@dataclass(frozen=True)
class WorkerPlan:
    actors: int
    threads: int  # torch intra-op threads per actor
    actor_cpus: float  # Ray CPUs each encoder actor holds
    actor_gpus: int
    io_cpus: float  # Ray CPUs of each reader and writer task
    rows_per_batch: int  # rows per call of an encoder actor
    concurrent_calls: int  # calls an actor works on at once
    tasks_in_flight: int  # blocks queued on an actor (including those it is working on)


def plan_workers(
    cpus: int,
    gpus: int,
    actors: int | None = None,
    threads: int | None = None,
    rows_per_batch: int | None = None,
) -> WorkerPlan:
    """The plan for a cluster of `cpus` logical CPUs and `gpus` GPUs; given values win over defaults."""
    if gpus:
        return WorkerPlan(
            actors=actors or gpus,
            threads=threads or 1,
            actor_cpus=1,
            actor_gpus=1,
            io_cpus=0.5,
            rows_per_batch=rows_per_batch or ROWS_PER_BATCH["cuda"],
            concurrent_calls=GPU_CONCURRENT_CALLS,
            tasks_in_flight=2 * GPU_CONCURRENT_CALLS,
        )
    threads = threads or 1
    actors = actors or max(1, cpus // threads)
    share = max(cpus - IO_CPUS, 0.1) / actors
    return WorkerPlan(
        actors=actors,
        threads=threads,
        actor_cpus=round(min(float(threads), share), 3),
        actor_gpus=0,
        io_cpus=IO_TASK_CPUS,
        rows_per_batch=rows_per_batch or ROWS_PER_BATCH["cpu"],
        concurrent_calls=1,
        tasks_in_flight=1,
    )


def plan_rows_per_call(rows_in: int, plan: WorkerPlan, given: int | None = None) -> WorkerPlan:
    """The plan with rows per encoder call for a run of `rows_in` rows: on CPUs, a whole number of the default
    batches, up to MAX_ROWS_PER_CALL, leaving every actor CALLS_PER_ACTOR calls; GPU plans and a given size
    stay as they are."""
    if given or plan.actor_gpus:
        return plan
    wanted = rows_in // (CALLS_PER_ACTOR * max(plan.actors, 1))
    rows = min(MAX_ROWS_PER_CALL, wanted // plan.rows_per_batch * plan.rows_per_batch)
    return replace(plan, rows_per_batch=max(plan.rows_per_batch, rows))


def plan_rows_per_write(rows_in: int, plan: WorkerPlan, given: int | None = None) -> int:
    """Rows per upsert commit. Big commits cost least per row (each one is a Lance version and a key
    join), but the rows of the last commit are written only after every encoder has finished: a small
    corpus committed once at the end leaves the cluster idle for the whole write (measured: 3.6 s of
    waiting for the writer plus 1.3 s of writing after 50 s of encoding, 2,714 rows on 2 CPUs). So
    several commits per actor, a whole number of encoder batches each, at most MAX_ROWS_PER_WRITE."""
    if given:
        return given
    wanted = max(1, rows_in // (WRITES_PER_ACTOR * max(plan.actors, 1)))
    batches = -(-wanted // plan.rows_per_batch)
    return max(plan.rows_per_batch, min(MAX_ROWS_PER_WRITE, batches * plan.rows_per_batch))


def plan_partitions(rows: int) -> int:
    """Hash partitions of ids for `rows` shuffled rows (input rows plus scanned table keys)."""
    return max(1, -(-rows // ROWS_PER_PARTITION))
