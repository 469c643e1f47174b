"""The encoder actor plan for CPU-only and GPU clusters (no Ray needed)."""

from __future__ import annotations

from pipelines.workers import (
    CALLS_PER_ACTOR,
    IO_CPUS,
    MAX_ROWS_PER_CALL,
    MAX_ROWS_PER_WRITE,
    plan_rows_per_call,
    plan_rows_per_write,
    plan_workers,
)


def test_cpu_cluster_gets_one_single_threaded_actor_per_core_and_room_for_io():
    plan = plan_workers(cpus=2, gpus=0)
    assert (plan.actors, plan.threads, plan.actor_gpus, plan.concurrent_calls, plan.tasks_in_flight) == (2, 1, 0, 1, 1)
    assert plan.actors * plan.actor_cpus + IO_CPUS <= 2
    assert plan.io_cpus <= IO_CPUS / 2  # a reader and a writer fit at once


def test_given_values_win_and_actors_never_hold_more_cpus_than_threads():
    plan = plan_workers(cpus=4, gpus=0, actors=2, threads=1, rows_per_batch=16)
    assert (plan.actors, plan.threads, plan.rows_per_batch, plan.actor_cpus) == (2, 1, 16, 1.0)
    wide = plan_workers(cpus=16, gpus=0, threads=4)
    assert wide.actors == 4 and wide.actor_cpus <= 4


def test_gpu_cluster_gets_an_actor_per_gpu_taking_two_batches_at_once():
    plan = plan_workers(cpus=32, gpus=4)
    assert (plan.actors, plan.actor_gpus, plan.concurrent_calls) == (4, 1, 2)
    assert plan.rows_per_batch > plan_workers(cpus=32, gpus=0).rows_per_batch


def test_commits_come_several_per_actor_in_whole_encoder_batches_up_to_the_cap():
    cpu = plan_workers(cpus=2, gpus=0)
    small = plan_rows_per_write(2714, cpu)
    assert small % cpu.rows_per_batch == 0 and 2714 // small >= 4  # the last commit is a small part of the run
    assert plan_rows_per_write(10, cpu) == cpu.rows_per_batch
    assert plan_rows_per_write(10_000_000, cpu) == MAX_ROWS_PER_WRITE
    assert plan_rows_per_write(10_000_000, cpu, given=100) == 100
    gpu = plan_workers(cpus=32, gpus=4)
    assert plan_rows_per_write(1_000_000, gpu) == max(gpu.rows_per_batch, MAX_ROWS_PER_WRITE)


def test_cpu_calls_grow_with_the_run_in_whole_batches_leaving_every_actor_several():
    cpu = plan_workers(cpus=2, gpus=0)
    assert plan_rows_per_call(2714, cpu) == cpu  # a small corpus keeps the default batch
    big = plan_rows_per_call(60_000, cpu)
    assert big.rows_per_batch % cpu.rows_per_batch == 0 and cpu.rows_per_batch < big.rows_per_batch
    assert 60_000 // (big.rows_per_batch * big.actors) >= CALLS_PER_ACTOR
    assert plan_rows_per_call(10**9, cpu).rows_per_batch == MAX_ROWS_PER_CALL
    assert plan_rows_per_call(10**9, cpu, given=64) == cpu  # --rows-per-batch wins (the plan already has it)
    gpu = plan_workers(cpus=32, gpus=4)
    assert plan_rows_per_call(10**9, gpu) == gpu
    # commits stay whole calls
    assert plan_rows_per_write(60_000, big) % big.rows_per_batch == 0


def test_object_store_sizes_read_like_people_write_them():
    import argparse

    import pytest

    from pipelines.commands.options import object_store_size

    assert object_store_size("2GB") == 2 * 10**9
    assert object_store_size("512MiB") == 512 * 2**20
    assert object_store_size("1.5GiB") == 3 * 2**29
    assert object_store_size("100000000") == 10**8
    for bad in ("lots", "2TB", "1MB"):  # not a size, unknown unit, too small for Ray
        with pytest.raises(argparse.ArgumentTypeError):
            object_store_size(bad)
