"""The batch ring (data/ring.py): batches from forked DataLoader workers through reused shared slots.

In-process with the real DataLoader and forked workers (no training: the consumer is the test).
Samples carry their own number (every value of an array, two pixels of an image), so each batch
is checked against the samples the DataLoader's own hand-over gives in the same order.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import get_worker_info

from ae_train import logs, stacks
from ae_train.data.datamodule import EpochDataLoader
from ae_train.data.decode import SampleSpec
from ae_train.data.make import _png, write_image_shards, write_shards
from ae_train.data.reader import ShardBatches
from ae_train.diagnose.parse import WAITS
from conftest import ROOT, alive, wait_for, wait_gone

logs._state.setdefault("rank_tag", "test")  # workers stamp their log records with it
DIM = 16
SIZES = [96, 80, 120, 64, 100]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> list[str]:
    """Shards whose sample j is the vector (j, j, ..., j)."""
    data = np.repeat(np.arange(sum(SIZES), dtype=np.float32)[:, None], DIM, axis=1)
    return write_shards(str(tmp_path_factory.mktemp("numbered")), "train", data, SIZES)


def _keys(batch: torch.Tensor) -> list[int]:
    """The sample numbers of a batch of numbered vectors (or numbered images)."""
    if batch.dtype == torch.uint8:
        return (batch[:, 0, 0, 0].long() * 256 + batch[:, 0, 0, 1].long()).tolist()
    rows = batch.reshape(len(batch), -1)
    assert torch.equal(rows, rows[:, :1].expand_as(rows)), "a row mixes two samples"
    return rows[:, 0].long().tolist()


def _loader(urls, counts, ring_slots, spec=DIM, batch=8, workers=2, shuffle=True, skip=0, key="x.npy"):
    ds = ShardBatches(urls, counts, "train_shards", key, spec, batch, workers, 0, 1, 7, shuffle, 0)
    return EpochDataLoader(ds, lambda: (0, skip), ring_slots=ring_slots, batch_size=None, num_workers=workers,
                           multiprocessing_context="fork")


def _expected(urls, counts, **kw) -> list[list[int]]:
    """The sample numbers of every batch as the DataLoader's own hand-over gives them."""
    return [_keys(b) for b in _loader(urls, counts, 0, **kw)]


def test_ring_gives_the_dataloaders_batches_in_its_order(numbered):
    want = _expected(numbered, SIZES)
    loader = _loader(numbered, SIZES, None)
    got = [_keys(b) for b in loader]
    assert got == want and len(got) == len(loader) > 0
    assert loader.ring is not None and loader.ring.slots == 5  # the ring was used: prefetch_factor 2 + 3
    assert [_keys(b) for b in loader] == want  # a second epoch through the same ring (new workers)


def test_ring_never_rewrites_a_batch_the_consumer_still_holds(numbered):
    """A slow consumer keeps up to 4 batches alive (more than a worker's free slots) while fast workers
    fill the rest: every kept batch still holds its samples when the next ones arrive."""
    want = _expected(numbered, SIZES)
    loader = _loader(numbered, SIZES, 3)  # 3 slots per worker: the consumer soon holds them all
    kept: list[tuple[torch.Tensor, list[int]]] = []
    got, copies = [], 0
    for i, batch in enumerate(loader):
        got.append(_keys(batch))
        copies += batch.untyped_storage().data_ptr() not in _slot_addresses(loader.ring)
        kept.append((batch, got[-1]))
        kept = kept[-(1 + i % 4):]  # hold 1..4 batches, released in varying order
        time.sleep(0.002)  # slow step: the workers run ahead and wait for free slots
        for view, keys in kept:
            assert _keys(view) == keys, f"batch {keys[:3]}... was overwritten while held"
    assert got == want
    assert copies > 0  # holding more than slots - 2 of a worker's batches made the ring hand out copies
    derived = next(iter(loader))[:, :3]  # a view of a view keeps the slot busy too
    keys = _keys(derived)
    for _ in range(6):
        assert _keys(derived) == keys


def _slot_addresses(ring) -> set[int]:
    return {ring.slot_array(i).ctypes.data for i in range(ring.workers * ring.slots)}


def test_ring_carries_images_as_uint8(tmp_path):
    sizes = [20, 28, 24]

    def samples():
        for j in range(sum(sizes)):
            img = np.full((4, 4, 3), j % 7, np.uint8)
            img[0, 0, 0], img[0, 1, 0] = j // 256, j % 256  # channel 0, row 0: the sample number
            yield "png", _png(img), 0

    urls = write_image_shards(str(tmp_path), "img", samples(), sizes)
    spec = SampleSpec((3, 4, 4), "uint8", "image")
    kw = dict(spec=spec, key="png", batch=6)
    want = _expected(urls, sizes, **kw)
    batches = list(b.clone() for b in _loader(urls, sizes, None, **kw))
    assert all(b.dtype == torch.uint8 and b.shape == (6, 3, 4, 4) for b in batches)
    assert [_keys(b) for b in batches] == want and len(want) == sum(sizes) // 6


def test_ring_resumes_mid_epoch_with_the_same_batches(numbered):
    want = _expected(numbered, SIZES)
    assert [_keys(b) for b in _loader(numbered, SIZES, None, skip=5)] == want[5:]


class _Exploding(ShardBatches):
    """A shard whose read fails with an error the reader does not handle (a bug, not a bad shard)."""

    def _open(self, piece, ahead):
        if piece.shard == 2:
            raise RuntimeError(f"cannot map {self.urls[piece.shard]}")
        return super()._open(piece, ahead)


def test_ring_worker_error_reaches_the_rank_with_the_shard_named(numbered):
    ds = _Exploding(numbered, SIZES, "train_shards", "x.npy", DIM, 8, 2, 0, 1, 7, False, 0)
    loader = EpochDataLoader(ds, lambda: (0, 0), batch_size=None, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match=r"cannot map .*train-000002\.tar") as err:
        for _ in loader:
            pass
    assert "Caught RuntimeError in DataLoader worker process" in str(err.value)  # the worker's traceback
    assert "_open" in str(err.value)
    assert loader.ring is not None


def test_ring_a_killed_worker_stops_the_rank_with_the_dataloaders_error(numbered):
    it = iter(_loader(numbered, SIZES, None))
    next(it)
    os.kill(it.inner._workers[1].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid(\(s\))? \d+\) (is killed by signal|exited unexpectedly)"):
        for _ in it:
            pass


class _Stalling(ShardBatches):
    """Worker 0's first shard takes a while (a slow mount): the rank waits for data meanwhile."""

    def _open(self, piece, ahead):
        if get_worker_info().id == 0 and not self._stalled:
            self._stalled = True
            time.sleep(3)
        return super()._open(piece, ahead)


def test_ring_a_rank_waiting_for_a_worker_shows_as_waiting_for_data_in_its_stacks(numbered):
    """What the hang watchdog dumps for a stalled worker: diagnose tells the main thread waits for data."""
    ds = _Stalling(numbered, SIZES, "train_shards", "x.npy", DIM, 8, 2, 0, 1, 7, False, 0)
    ds._stalled = False
    loader = EpochDataLoader(ds, lambda: (0, 0), batch_size=None, num_workers=2, multiprocessing_context="fork")
    main, dumps = threading.main_thread().ident, []

    def watch():
        deadline = time.monotonic() + 30
        while not dumps and time.monotonic() < deadline:
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code.co_name == "_next_data" and frame.f_code.co_filename.endswith("ring.py"):
                dumps.append(stacks.format_stacks("rank 0", "hang"))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    got = sum(len(b) for b in loader)  # the stall ends by itself: every batch still comes
    watcher.join()
    assert got == len(loader) * 8 and dumps
    main_thread = dumps[0].split("Thread 0x")[1]  # the main thread's block comes first
    patterns = dict(WAITS)["data"]
    assert any(p.decode() in main_thread for p in patterns), main_thread


RANK = """
import os, sys, time
sys.path.insert(0, {tests!r})
from test_ring import _loader
urls = {urls!r}
it = iter(_loader(urls, {sizes!r}, None))
held = [next(it), next(it)]  # the workers fill their other slots, then wait for free ones
print("workers", *[w.pid for w in it.inner._workers], flush=True)
time.sleep(120)
"""


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_ring_workers_exit_and_nothing_is_left_in_dev_shm_when_the_rank_dies(numbered, tmp_path, sig):
    before = _shm()
    out = tmp_path / "out.txt"
    script = RANK.format(tests=str(ROOT / "tests"), urls=numbered, sizes=SIZES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    with open(out, "w") as f:
        rank = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=f, stderr=subprocess.STDOUT,
                                env=env)
    try:
        wait_for(out, r"workers \d+ \d+", 60)
        workers = [int(p) for p in out.read_text().split("workers", 1)[1].split()]
        assert all(Path(f"/proc/{p}").exists() for p in workers)
        rank.send_signal(sig)
        rank.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(workers), "a worker outlived its rank"
    finally:
        rank.kill()
    # Another test running beside this one (pytest -n) may hold a segment for a moment: a leak stays.
    deadline = time.monotonic() + 10
    while (leaked := {n for n in _shm() - before if n.startswith(("torch_", "sem.mp", "psm_", "ae_"))}) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leaked, f"left in /dev/shm: {leaked}"



def test_ring_workers_serve_every_epoch_and_a_cut_short_one(numbered):
    """The workers are forked once and serve each epoch the rank starts: every epoch's batches are the
    DataLoader hand-over's for that epoch, also after an epoch left after 3 batches; close() stops them."""

    def loader(ring_slots, epoch):
        ds = ShardBatches(numbered, SIZES, "train_shards", "x.npy", DIM, 8, 2, 0, 1, 7, True, 0)
        return EpochDataLoader(ds, lambda: (epoch[0], 0), ring_slots=ring_slots, batch_size=None, num_workers=2,
                               multiprocessing_context="fork")

    plain_epoch, ring_epoch = [0], [0]
    plain, ring = loader(0, plain_epoch), loader(None, ring_epoch)
    pids, wants = set(), {}
    for epoch, cut in [(0, None), (1, 3), (2, None), (3, None)]:
        plain_epoch[0] = ring_epoch[0] = epoch
        want = wants[epoch] = [_keys(b) for b in plain]
        it = iter(ring)
        got = []
        for b in it:
            got.append(_keys(b))
            if len(got) == cut:
                break
        pids |= {w.pid for w in it.inner._workers}
        assert got == (want[:cut] if cut else want), epoch
    assert len(pids) == 2, pids  # the same two workers in every epoch
    assert wants[0] != wants[2]  # each epoch its own plan: the workers were told which epoch to serve
    ring.close()
    assert wait_gone(sorted(pids), 30) == []
