"""screen: samples holding NaN or inf are left out of every batch, named (key and shard) and counted; the
batch counts stay the same. Real shards through the reader's fast path and its streamed path."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ae_train.data.make import synthetic, write_shards
from ae_train.data.reader import ShardBatches
from ae_train.data.screen import bad_rows, finite

SIZES = [40, 33, 27]


def _shards(tmp_path):
    data = synthetic(sum(SIZES), 16, 4, 0)
    data[5, 3], data[41, 0], data[90, 7] = np.nan, np.inf, -np.inf  # shards 0, 1 and 2
    return write_shards(str(tmp_path), "train", data, SIZES), data


def test_screen_finite_and_bad_rows():
    x = np.ones((4, 3), np.float32)
    assert finite(x)
    x[2, 1] = np.nan
    assert not finite(x) and bad_rows(x).tolist() == [2]
    big = np.full((2, 2), 3e19, np.float32)  # squares overflow: still finite
    assert finite(big) and bad_rows(big).size == 0


@pytest.mark.parametrize("buffer_bytes", [1 << 20, 0], ids=["fast", "streamed"])
def test_screen_leaves_out_nan_and_inf_samples_with_a_warning(tmp_path, caplog, buffer_bytes):
    urls, data = _shards(tmp_path)
    ds = ShardBatches(urls, SIZES, "train_shards", "x.npy", 16, 8, 0, 0, 1, 3, True, keys=True,
                      buffer_bytes=buffer_bytes, shuffle_buffer=10)
    with caplog.at_level(logging.WARNING, logger="ae_train"):
        batches = list(DataLoader(ds, batch_size=None, num_workers=0))
    assert len(batches) == ds.plan.batches_per_rank == 100 // 8  # the batch count is the plan's
    x = torch.cat([b.x for b in batches]).numpy()
    keys = [k for b in batches for k in b.keys]
    assert np.isfinite(x).all() and ds.nonfinite.value == 3
    bad = {"train000000_000000005": urls[0], "train000001_000000041": urls[1], "train000002_000000090": urls[2]}
    for key, url in bad.items():
        assert f"Sample {key} of shard {url} holds NaN or inf; left out" in caplog.text
    kept = [k for k in keys if k not in bad]
    assert len(kept) == len(keys) - sum(k in bad for k in keys) and not set(bad) & set(keys)
    # each row is the sample its key names (the repeats that took the bad samples' places too)
    index = {f"train{s:06d}_{j:09d}": j for s, n in enumerate(SIZES) for j in range(sum(SIZES[:s]), sum(SIZES[:s + 1]))}
    np.testing.assert_array_equal(x, data[[index[k] for k in keys]])
