"""The per-worker reader: streamed and whole-buffer paths give the same samples, padding repeats real
samples (never zeros), and a split with nothing readable stops instead of training on made-up data."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ae_train.data.reader import NoReadableSamples, ShardBatches
from conftest import make_shards


def _batches(ds: ShardBatches) -> np.ndarray:
    return torch.cat(list(DataLoader(ds, batch_size=None, num_workers=0))).numpy()


def test_reader_stream_above_buffer_limit_equals_fast_path(tmp_path):
    urls = make_shards(tmp_path, [37, 50, 9])
    counts = [37, 50, 9]
    fast = ShardBatches(urls, counts, "train_shards", "x.npy", 16, 8, 0, 0, 1, 0, False)
    streamed = ShardBatches(urls, counts, "train_shards", "x.npy", 16, 8, 0, 0, 1, 0, False, buffer_bytes=0)
    assert all(fast._fast(u) for u in urls) and not any(streamed._fast(u) for u in urls)
    np.testing.assert_array_equal(_batches(fast), _batches(streamed))
    # shuffled: another order inside the shards, the same samples
    a = _batches(ShardBatches(urls, counts, "t", "x.npy", 16, 8, 0, 0, 1, 3, True))
    b = _batches(ShardBatches(urls, counts, "t", "x.npy", 16, 8, 0, 0, 1, 3, True, buffer_bytes=0, shuffle_buffer=20))
    assert a.shape == b.shape and not np.array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a, axis=0), np.sort(b, axis=0))


def test_reader_stage_times_are_filled_by_the_reader_only_when_given(tmp_path):
    import os

    from ae_train.data.stagetimes import StageTimes

    urls = make_shards(tmp_path, [37, 50, 9])
    counts = [37, 50, 9]
    plain = ShardBatches(urls, counts, "t", "x.npy", 16, 8, 0, 0, 1, 0, False)
    fast_times, stream_times = StageTimes(), StageTimes()
    fast = ShardBatches(urls, counts, "t", "x.npy", 16, 8, 0, 0, 1, 0, False, stage_times=fast_times)
    streamed = ShardBatches(urls, counts, "t", "x.npy", 16, 8, 0, 0, 1, 0, False, buffer_bytes=0,
                            stage_times=stream_times)
    expected = _batches(plain)  # timing changes nothing in what is read
    np.testing.assert_array_equal(_batches(fast), expected)
    np.testing.assert_array_equal(_batches(streamed), expected)
    t = fast_times.values()
    assert t["bytes"] == sum(os.path.getsize(u) for u in urls)  # every shard read once, whole
    assert t["read"] > 0 and t["decode"] > 0 and t["batches"] >= t["read_wait"] + t["decode"] > 0
    assert t["slot_wait"] == 0  # no ring
    t = stream_times.values()
    assert t["read"] > 0 and t["read"] == t["read_wait"] and t["decode"] > 0 and t["bytes"] == 0
    assert t["batches"] >= t["read"] + t["decode"]


def test_reader_padding_repeats_real_samples_from_other_shards(tmp_path):
    bad, good = make_shards(tmp_path, [16, 16])
    with open(bad, "r+b") as f:  # corrupt after counting: found when read
        f.write(b"\xff" * 2048)
    real = _batches(ShardBatches([good], [16], "t", "x.npy", 16, 8, 0, 0, 1, 0, False))
    # rank 0 of 2 gets only the broken shard: its two batches must be real samples of the split
    ds = ShardBatches([bad, good], [16, 16], "train_shards", "x.npy", 16, 8, 0, 0, 2, 0, False)
    got = _batches(ds)
    assert got.shape == (16, 16) and ds.errors.value == 1
    assert np.abs(got).sum(axis=1).min() > 0, "a padded row of zeros"
    assert {r.tobytes() for r in got} <= {r.tobytes() for r in real}


def test_reader_nothing_readable_stops(tmp_path):
    (bad,) = make_shards(tmp_path, [16])
    with open(bad, "r+b") as f:
        f.write(b"\xff" * 2048)
    ds = ShardBatches([bad], [16], "train_shards", "x.npy", 16, 8, 0, 0, 1, 0, False)
    with pytest.raises(NoReadableSamples, match="no sample of any shard can be read .* instead of training on made-up"):
        _batches(ds)


def test_reader_remote_and_gzip_read_errors_name_url_and_reason(http_root, tmp_path, caplog):
    import gzip

    root, base = http_root
    (good,) = make_shards(root / "errs", [16])
    packed = tmp_path / "cut.tar.gz"
    data = gzip.compress(open(good, "rb").read())
    packed.write_bytes(data[: len(data) // 2])
    urls = [f"{base}/errs/missing-000000.tar", str(packed), good]
    ds = ShardBatches(urls, [16, 16, 16], "train_shards", "x.npy", 16, 8, 0, 0, 1, 0, False)
    with caplog.at_level("DEBUG", logger="ae_train"):
        got = _batches(ds)
    assert got.shape == (48, 16) and ds.errors.value == 2  # padded with real samples of the good shard
    text = caplog.text
    assert f"Opening shard {base}/errs/missing-000000.tar" in text  # written before the open
    assert re.search(rf"Error reading shard {re.escape(base)}/errs/missing-000000.tar: curl exited with code 22: .*404", text)
    assert re.search(rf"Error reading shard {re.escape(str(packed))}: truncated gzip stream", text)


def test_reader_a_later_piece_that_loses_samples_is_an_error_and_a_shard_error(tmp_path, caplog):
    """A shard split between two workers whose second half cannot be read: the worker planned for it
    logs an ERROR naming the shard and counts a shard error (never only a DEBUG line), then pads."""
    import gzip
    from pathlib import Path

    (good,) = make_shards(tmp_path, [64])
    packed = tmp_path / "cut.tar.gz"
    data = gzip.compress(Path(good).read_bytes())
    packed.write_bytes(data[: len(data) * 3 // 4])  # samples 0..~47 survive
    ds = ShardBatches([str(packed)], [64], "train_shards", "x.npy", 16, 8, 2, 0, 1, 0, False)
    assert [(p.start, p.stop) for w in ds.plan.workers[0] for p in w.pieces] == [(0, 32), (32, 64)]
    with caplog.at_level("DEBUG", logger="ae_train"):
        first, second = list(ds._worker_batches(0)), list(ds._worker_batches(1))
    assert len(first) == len(second) == 4 and ds.errors.value == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"Error reading shard {packed}: truncated gzip stream (compressed data ends before its end "
                      "marker); skipped"], errors
    assert re.search(r"train_shards: worker read 1\d of 32 planned samples; padding \d batch", caplog.text)
    assert re.search(r"COMPLETED iteration, total samples: 32 \(epoch 0, batches 4, shards 1, errors 0", caplog.text)
    assert re.search(r"COMPLETED iteration, total samples: 1\d \(epoch 0, batches 4, shards 1, errors 1", caplog.text)
    # Broken near its start: both workers lose their samples, two ERRORs, one shard error
    packed.write_bytes(data[: len(data) // 10])
    ds.set_epoch(0)
    caplog.clear()
    with caplog.at_level("DEBUG", logger="ae_train"):
        first, second = list(ds._worker_batches(0)), list(ds._worker_batches(1))
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 2 and ds.errors.value == 1


@pytest.mark.parametrize("skip", [1, 2, 3, 7])
def test_reader_mid_epoch_resume_keeps_the_order_for_any_skip(tmp_path, skip):
    """A resumed epoch (any number of batches already trained, odd ones too) goes on with the batches an
    uninterrupted epoch would have given, through a real DataLoader with 2 forked workers."""
    urls = make_shards(tmp_path, [40, 24, 33])
    counts = [40, 24, 33]

    def epoch(skip_batches: int) -> list[np.ndarray]:
        ds = ShardBatches(urls, counts, "train_shards", "x.npy", 16, 8, 2, 0, 1, 5, True, 1)
        ds.skip_batches = skip_batches
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
        return [b.numpy() for b in loader]

    full, resumed = epoch(0), epoch(skip)
    assert len(resumed) == len(full) - skip
    for a, b in zip(full[skip:], resumed):
        np.testing.assert_array_equal(a, b)
