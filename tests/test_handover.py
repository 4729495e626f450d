"""The two hand-overs behind one interface (data/handover.py): with 3 forked workers, an epoch resumed after
any number of trained batches goes on with the batches of the uninterrupted epoch, through the batch ring
as through the DataLoader's own hand-over (worker w serves plan worker (w + skip) % K either way)."""
from __future__ import annotations

import signal

import numpy as np
import pytest

from ae_train.data.datamodule import EpochDataLoader
from ae_train.data.handover import DataLoaderHandOver, RingHandOver, serves
from ae_train.data.reader import ShardBatches
from conftest import make_shards

SIZES = [40, 24, 33, 51]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return make_shards(tmp_path_factory.mktemp("handover"), SIZES)


def _epoch(urls: list[str], ring_slots: int, skip: int) -> tuple[list[np.ndarray], type]:
    ds = ShardBatches(urls, SIZES, "train_shards", "x.npy", 16, 8, 3, 0, 1, 5, True, 1)
    loader = EpochDataLoader(ds, lambda: (1, skip), ring_slots=ring_slots, batch_size=None, num_workers=3,
                             multiprocessing_context="fork")
    batches = [b.numpy().copy() for b in loader]
    loader.close()
    return batches, type(ds.handover)


def test_handover_serves_maps_each_worker_to_the_plan_worker_of_its_batches():
    for workers in (1, 2, 3, 5):
        for skip in range(12):
            got = {}
            for w in range(workers):
                plan, skipped = serves(w, workers, skip)
                assert skipped == len(range(plan, skip, workers))  # that plan worker's share of the trained
                got[w] = plan
            # the rank's batch i comes from worker i % K and is epoch batch skip + i, made by plan worker (skip + i) % K
            assert all(got[i % workers] == (skip + i) % workers for i in range(3 * workers))


@pytest.mark.parametrize("skip", [2, 4])
def test_handover_a_resumed_epoch_goes_on_with_the_same_batches_both_ways(shards, skip):
    full, way = _epoch(shards, 0, 0)
    assert way is DataLoaderHandOver and len(full) == sum(SIZES) // 8
    for ring_slots, expected in ((0, DataLoaderHandOver), (None, RingHandOver)):
        resumed, way = _epoch(shards, ring_slots, skip)
        assert way is expected
        assert len(resumed) == len(full) - skip
        for a, b in zip(full[skip:], resumed):
            np.testing.assert_array_equal(a, b)


class _PlanningFails(ShardBatches):
    def _plan_for(self, epoch: int) -> None:
        raise RuntimeError("no plan for this worker")


@pytest.mark.parametrize("ring_slots", [0, None])
def test_handover_a_worker_failing_before_its_first_batch_fails_the_epoch_both_ways(shards, ring_slots):
    ds = _PlanningFails(shards, SIZES, "train_shards", "x.npy", 16, 8, 3, 0, 1, 5, True, 1)
    loader = EpochDataLoader(ds, lambda: (0, 0), ring_slots=ring_slots, batch_size=None, num_workers=2,
                             multiprocessing_context="fork")
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the rank waits for a worker that failed"))
    signal.alarm(60)
    try:
        with pytest.raises(RuntimeError, match="no plan for this worker"):
            list(loader)  # the worker's exception, with its traceback, not a wait that never ends
    finally:
        signal.alarm(0)
        loader.close()
