"""Elastic resume: an epoch stopped after any batch, continued over another number of ranks and workers
(or another shuffle buffer), trains every sample it had left exactly once. Real shards, the real loader
with forked workers (through the batch ring and through the DataLoader's own hand-over), keys read
from the batches themselves."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from ae_train.data.datamodule import EpochDataLoader
from ae_train.data.reader import ShardBatches
from ae_train.data.resume import OrderState, Segment, mismatch, shards_digest
from ae_train.exitcodes import ExitCode
from conftest import make_shards
from helpers import ledger_lines, run_ts

SIZES = [37, 50, 9, 64, 23]
EPOCH = 2


def _loader(urls, world, workers, rank, done, state, ring, **kw) -> tuple[EpochDataLoader, list[list[str]]]:
    ds = ShardBatches(urls, SIZES, "train_shards", "x.npy", 16, 8, workers, rank, world, 5, True, keys=True, **kw)
    ds.resume_state = state
    loader = EpochDataLoader(ds, lambda: (EPOCH, done), ring_slots=None if ring else 0, batch_size=None,
                             num_workers=workers, multiprocessing_context="fork" if workers else None)
    batches = [list(b.keys) for b in loader]
    loader.close()
    return loader, batches


def _segment(urls, world, workers, done, stop, state, ring, **kw) -> tuple[list[str], OrderState, int, int]:
    """Each rank's batches from epoch batch `done` on; the keys of those before `stop` (per rank) count as
    trained. Returns the trained keys, the order state a checkpoint at `stop` would hold, the batches per
    rank of the epoch and the padding of the plan this segment followed."""
    trained, lengths = [], set()
    for rank in range(world):
        loader, batches = _loader(urls, world, workers, rank, done, state, ring, **kw)
        lengths.add(len(loader.dataset))
        assert len(batches) == len(loader.dataset) - done  # equal batches on every rank, the resumed part only
        for keys in batches[:stop - done]:
            trained += keys
        if rank == 0:
            kept, padded = loader.dataset.order_state(), loader.dataset.plan.padded
    assert len(lengths) == 1, lengths
    return trained, kept, lengths.pop(), padded


@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize("worlds", [
    [(2, 2, 3), (1, 1, None)],                  # the case: 2 ranks x 2 workers -> 1 x 1
    [(1, 2, 5), (3, 2, 9), (2, 1, None)],       # stopped twice, growing then shrinking
    [(2, 1, 1), (2, 2, None)],                  # only the workers change
])
def test_resume_every_sample_left_is_trained_once_in_another_world(tmp_path, worlds, ring):
    urls = make_shards(tmp_path, SIZES)
    world, workers, _ = worlds[0]
    planned, _, _, padded = _segment(urls, world, workers, 0, 10**9, None, ring)  # the epoch never stopped
    assert padded == 0 and len(set(planned)) == len(planned)
    state, done, got, repeats = None, 0, Counter(), 0
    for world, workers, stop in worlds:
        trained, state, length, padded = _segment(urls, world, workers, done, stop or 10**9, state, ring)
        got.update(trained)
        repeats += padded if done else 0  # later segments top their last batches up with repeats
        done = stop or length
    assert [s.start for s in state.segments] == [0] + [stop for _, _, stop in worlds[:-1]]
    assert set(got) == set(planned), "samples lost or made up"
    assert sum(got.values()) - len(got) <= repeats, "a sample trained twice beyond the padding the plans report"


def test_resume_same_world_goes_on_with_the_same_batches(tmp_path):
    urls = make_shards(tmp_path, SIZES)
    _, full = _loader(urls, 2, 2, 1, 0, None, True)
    _, state, _, _ = _segment(urls, 2, 2, 0, 4, None, True)
    loader, resumed = _loader(urls, 2, 2, 1, 4, state, True)
    assert resumed == full[4:] and loader.dataset.order_state().segments == state.segments


def test_resume_streamed_shards_and_another_shuffle_buffer(tmp_path):
    """Streamed pieces (over data.buffer_mb) go through the shuffle buffer; changing it at the resume
    is a new data order, continued exactly like a new world."""
    urls = make_shards(tmp_path, SIZES)
    trained, state, _, _ = _segment(urls, 2, 2, 0, 3, None, True, buffer_bytes=0, shuffle_buffer=7)
    rest, state2, _, padded = _segment(urls, 2, 2, 3, 10**9, state, True, buffer_bytes=0, shuffle_buffer=20)
    assert state2.segments[1] == Segment(2, 2, 3, 5, True, 20, 0)
    full, _, _, _ = _segment(urls, 2, 2, 0, 10**9, None, True, buffer_bytes=0, shuffle_buffer=7)
    got = Counter(trained + rest)
    assert set(got) == set(full) and sum(got.values()) - len(got) <= padded


def test_resume_mismatch_names_what_changed():
    state = OrderState(3, 8, shards_digest(["a", "b"], [5, 6]), 40, [Segment(2, 2, 0, 0, True, 10, 0)])
    assert mismatch(state, 8, state.shards, 0) is None  # at an epoch boundary anything may change
    assert mismatch(state, 16, state.shards, 40) is None
    assert mismatch(state, 8, state.shards, 7) is None
    assert mismatch(state, 16, state.shards, 7) == ("data.batch_size is 16 but the checkpoint stopped inside epoch 3 "
                                                    "with data.batch_size=8")
    assert "data.train_shards" in mismatch(state, 8, shards_digest(["a", "b"], [5, 7]), 7)
    assert OrderState.from_dict(state.to_dict()) == state


def test_resume_a_real_run_stopped_on_2x2_finishes_its_epoch_on_1x1(elastic_runs):
    """The issue's check: 2 ranks x 2 workers stopped by SIGTERM mid-epoch, resumed with --trainer.devices=1
    --data.num_workers=1: the ledgers of both runs hold every training sample of that epoch exactly once."""
    from test_ledger import shard_keys

    r = elastic_runs
    assert r.resumed.proc.returncode == 0, r.resumed.console
    warning = re.search(r"\[WARNING\] \[Rank 0/1\] Resuming epoch 3 after its batch (\d+) on another world: it was "
                        r"planned for 2 rank\(s\) x 2 worker\(s\), this run has 1 rank\(s\) x 1 worker\(s\); its (\d+) "
                        r"samples not yet trained are planned again over this world: (\d+) batches per rank "
                        r"\(padded 0\)", r.resumed.console)
    assert warning, r.resumed.console
    lines = ledger_lines(r.out / "logs")
    epoch3 = Counter(k for *_, e, _, ks in lines if e == 3 for k in ks)
    everything = shard_keys(r.shards)
    assert max(epoch3.values()) == 1, "a sample trained twice"
    assert set(epoch3) <= everything and len(epoch3) == 2000  # the epoch's plan: 2007 samples, 7 dropped
    before = sum(1 for _, ts, e, _, _ in lines if e == 3 and ts != run_ts(r.resumed.console))
    assert before == 2 * int(warning[1]) and int(warning[2]) == 2000 - 8 * before
    epoch4 = Counter(k for *_, e, _, ks in lines if e == 4 for k in ks)  # planned for the new world
    assert max(epoch4.values()) == 1 and len(epoch4) == 2000 and len([1 for *_, e, _, _ in lines if e == 4]) == 250


def test_resume_inside_an_epoch_with_another_batch_size_is_one_line(elastic_runs):
    refused = elastic_runs.refused
    assert refused.returncode == ExitCode.BAD_INPUT
    assert refused.stderr.splitlines() == [
        f"ae-train: error: resume: {elastic_runs.out}/checkpoints/last.ckpt: data.batch_size is 16 but the checkpoint "
        "stopped inside epoch 3 with data.batch_size=8; the rest of that epoch cannot be planned exactly: resume with "
        "the earlier value (change it at an epoch end), or from a checkpoint saved at an epoch end"]
