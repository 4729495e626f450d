"""SampleLedger: `--log.sample_ledger=true` writes each rank's trained batches (epoch, global step, the
samples' keys), so that what a run trained can be proven. A real 2-rank run with 2 workers per rank."""
from __future__ import annotations

import re
import tarfile
from collections import Counter

from helpers import ledger_lines, run_ts


def shard_keys(directory) -> set[str]:
    """Every sample key in the shards of `directory`, read with tarfile."""
    keys = set()
    for path in directory.glob("*.tar"):
        with tarfile.open(path) as t:
            keys.update(m.name.split(".", 1)[0] for m in t.getmembers())
    return keys


def test_ledger_holds_every_sample_of_each_epoch_once(elastic_runs):
    r = elastic_runs.first
    ts = run_ts(r.console)
    lines = ledger_lines(r.logs, ts)
    everything = shard_keys(elastic_runs.shards)
    equalized = re.findall(r"\[Rank 0/2\] Equalized train_shards for epoch (\d+): 2 ranks x (\d+) batches of 8; "
                           r"dropped (\d+) samples, padded (\d+)", r.text(f"debug_rank0_{ts}.log"))
    assert [e for e, *_ in equalized] == ["0", "1", "2"]
    for epoch, batches, dropped, padded in equalized:
        keys = Counter(k for _, _, e, _, ks in lines if e == int(epoch) for k in ks)
        assert max(keys.values()) == 1 and int(padded) == 0
        assert set(keys) <= everything and len(keys) == len(everything) - int(dropped)
        for rank in (0, 1):
            steps = [s for rk, _, e, s, _ in lines if rk == rank and e == int(epoch)]
            assert steps == list(range(int(epoch) * int(batches), (int(epoch) + 1) * int(batches)))
    assert all(len(ks) == 8 for *_, ks in lines)
    assert "Sample ledger: " in r.text(f"debug_rank1_{ts}.log")
