"""Do data/'s other hand-written parts earn their lines? Each against the plain code it replaces, in one run.

    python bench/hand_written.py [--shards 8] [--per-shard 10000] [--dim 256] [--rounds 3] [--seconds 10]
                                 [--workers 2] [--dir DIR]

Issue 21's rule for a part whose speed is its only reason: keep it only where it wins by at least 1.3x
end to end on a realistic shard. The parts (the vectorised tar scan has its own script, tar_scan.py):

- uniform rows (npyrows.uniform_npy_rows): a piece's `.npy` members as one strided view of the shard
  when they share one header; plain: each member's header parsed (gather_npy's own path);
- read-ahead (source.read_shard_ahead): the next shard read in a thread while this one is batched;
  plain: each shard read when it is needed;
- numpy checksum (tario.read_header): a header's byte sum with numpy; plain: Python's `sum`.

Two more parts were measured here and removed for missing the 1.3x (docs/BENCHMARKS.md, "Hand-written
parts"): reused huge-page read buffers (1.25x one process, 1.05x workers) and the one-dot NaN check
(0.96x, 1.02x); the plain code they were measured against is the code now.

On the same shards (webdataset.ShardWriter, 8 x 10,000 float32[256] by default, read from the page
cache), `--rounds` times interleaved, each part is timed alone (its own unit) and end to end: `ae-train
bench-data` in this process with the plain code swapped in (the workers fork from it), its one-process
and workers rows. The checksum is timed where the fast path does not read headers: counting a shard
(a header scan) and the streamed path (`data.buffer_mb=0`).
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ae_train.data import npyrows, reader, source, stream, tario  # noqa: E402
from ae_train.data.shards import count_shard  # noqa: E402
from ae_train.data.tarscan import sample_table  # noqa: E402
from tar_scan import bench_data, shards_and_config  # noqa: E402


def no_read_ahead(url: str, next_url: str | None = None, times=None):
    return source.read_shard_ahead(url, None, times)


def plain_read_header(block: bytes, at: int) -> tuple[bytes, int]:
    stored = tario.octal(block[148:156], "checksum", at)
    if stored != sum(block) - sum(block[148:156]) + 8 * 32:
        raise tario.ShardError(f"not a tar file or corrupt header at byte {at} (checksum mismatch)")
    return block[156:157], tario.octal(block[124:136], "size", at)


# name: (module, attribute, plain version); every module that took the name by import is patched too
PARTS = {
    "uniform rows": [(npyrows, "uniform_npy_rows", lambda buf, members, dim: None)],
    "read-ahead": [(reader, "read_shard_ahead", no_read_ahead)],
    "numpy checksum": [(tario, "read_header", plain_read_header), (stream, "read_header", plain_read_header)],
}


@contextlib.contextmanager
def plain(part: str | None):
    saved = [(m, a, getattr(m, a)) for m, a, _ in PARTS.get(part, [])]
    for m, a, fn in PARTS.get(part, []):
        setattr(m, a, fn)
    try:
        yield
    finally:
        for m, a, fn in saved:
            setattr(m, a, fn)


def alone(part: str, urls: list[str], dim: int) -> tuple[float, str]:
    """The part's own work, in its unit: (value, unit). The read-ahead has none: it hides reads (end to end)."""
    if part == "uniform rows":
        buf = source.read_shard(urls[0])
        table = sample_table(buf, "x.npy")
        t0 = time.perf_counter()
        npyrows.gather_npy(buf, table, table.keys, dim)
        return (time.perf_counter() - t0) * 1e3, "ms per shard"
    if part == "read-ahead":
        return float("nan"), "(end to end only)"
    t0 = time.perf_counter()
    count_shard(urls[0])
    return (time.perf_counter() - t0) * 1e3, "ms to count a shard (header scan)"


def main() -> None:
    a, urls, config = shards_and_config("ae_parts_bench_")
    alone_: dict[tuple[str, str], list[float]] = {}
    ends: dict[tuple[str, str], dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    for r in range(a.rounds):
        for part in PARTS:
            order = [("hand-written", None), ("plain", part)]
            for how, swapped in (order if r % 2 == 0 else order[::-1]):
                with plain(swapped):
                    value, units[part] = alone(part, urls, a.dim)
                    alone_.setdefault((part, how), []).append(value)
                    extra = ["--data.buffer_mb=0"] if part == "numpy checksum" else []
                    for row, rate in bench_data(config, a.seconds, extra).items():
                        ends.setdefault((part, how), {}).setdefault(row, []).append(rate)
    med = lambda v: statistics.median(v)  # noqa: E731
    print(f"\n{'part':<22}{'alone: hand-written':>22}{'plain':>10}{'ratio':>8}   unit")
    for part in PARTS:
        h, w = med(alone_[(part, "hand-written")]), med(alone_[(part, "plain")])
        print(f"{part:<22}{h:>22,.2f}{w:>10,.2f}{w / h:>7.2f}x   {units[part]}")
    print(f"\n{'part':<22}{'bench-data row':<16}{'hand-written':>14}{'plain':>12}{'ratio':>8}   (median samples/s"
          f"{'; numpy checksum: streamed, data.buffer_mb=0' })")
    for part in PARTS:
        for row in ends[(part, "hand-written")]:
            h, w = med(ends[(part, "hand-written")][row]), med(ends[(part, "plain")][row])
            print(f"{part:<22}{row:<16}{h:>14,.0f}{w:>12,.0f}{h / w:>7.2f}x")


if __name__ == "__main__":
    main()
