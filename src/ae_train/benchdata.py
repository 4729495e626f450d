"""`ae-train bench-data`: can this machine's loader feed the GPUs?

    ae-train bench-data --config FILE [--key=value ...] [--seconds=S]

Runs the real training data path (the ShardBatches dataset and the DataLoader exactly as the
DataModule builds them) over `data.train_shards` for one rank: first in one process (num_workers=0),
then with the configured `data.num_workers`. Each run goes through epochs for `--seconds` (default
20; the last epoch is cut short there), the workers starting anew every epoch as in training.
Prints samples/s, MB/s of shard files read, batches/s, and where the loader's time goes: reading
(the file reads, most of them done by a read-ahead thread while the previous shard is decoded and
batched), decoding (tar walk, .npy header checks) and batching (gathering and shuffling the rows,
making tensors): shares of the sum of the three, so they add up to 100% even where reading overlaps
the rest; "read hidden" is the part of the read time the loader did not wait for. With workers
these are summed over the workers; handing batches to the main process is not in them (it shows in
samples/s).
"""
from __future__ import annotations

import multiprocessing
import os
import time
from contextlib import contextmanager

from .config import ConfigError, load_config, split_config_arg

USAGE = "usage: ae-train bench-data --config FILE [--key=value ...] [--seconds=S]"


def _parse(args: list[str]) -> tuple[str | None, list[str], float]:
    if "-h" in args or "--help" in args:
        raise ConfigError(USAGE)
    path, rest = split_config_arg(args)
    seconds, overrides = 20.0, []
    for a in rest:
        if not a.startswith("--seconds"):
            overrides.append(a)
            continue
        value = a.split("=", 1)[1] if "=" in a else ""
        try:
            seconds = float(value)
        except ValueError:
            raise ConfigError(f"--seconds: expected a number of seconds, got '{value}'") from None
        if seconds <= 0:
            raise ConfigError(f"--seconds must be > 0, got {value}")
    return path, overrides, seconds


@contextmanager
def _timed_stages(stats):
    """Time the stages of ShardBatches._open where it calls them, in this process, its read-ahead
    thread and in forked workers. stats: shared doubles [file reads s, decode s, bytes read,
    time inside the batch generator s, time the loader waited for reads s]."""
    from .data import reader, tario

    real = {name: getattr(reader, name) for name in ("read_shard_ahead", "sample_table", "gather_npy")}
    real_read, real_iter = tario.read_shard, reader.ShardBatches.__iter__

    def add(i: int, value: float) -> None:
        with stats.get_lock():
            stats[i] += value

    def read_shard(url):  # the file read itself, in the loader or in its read-ahead thread
        t = time.perf_counter()
        buf = real_read(url)
        add(0, time.perf_counter() - t)
        add(2, len(buf))
        return buf

    def timed(name, i):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return real[name](*args, **kwargs)
            finally:
                add(i, time.perf_counter() - t)
        return run

    def timed_iter(self):
        it = real_iter(self)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                add(3, time.perf_counter() - t)
                return
            add(3, time.perf_counter() - t)
            yield batch

    tario.read_shard = read_shard
    reader.read_shard_ahead = timed("read_shard_ahead", 4)
    reader.sample_table, reader.gather_npy = timed("sample_table", 1), timed("gather_npy", 1)
    reader.ShardBatches.__iter__ = timed_iter
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(reader, name, fn)
        tario.read_shard, reader.ShardBatches.__iter__ = real_read, real_iter


def _measure(cfg, urls, counts, workers: int, seconds: float) -> dict:
    import torch

    from . import logs
    from .data.datamodule import EpochDataLoader
    from .data.reader import ShardBatches

    # Workers stamp their log records with the rank's tag, which only a training rank sets up.
    logs._state.setdefault("rank_tag", "bench-data")

    ds = ShardBatches(urls, counts, "train_shards", cfg.data.sample_key, cfg.spec, cfg.data.batch_size,
                      workers, 0, 1, cfg.seed, cfg.data.shuffle, 0, buffer_bytes=cfg.data.buffer_mb << 20,
                      shuffle_buffer=cfg.data.shuffle_buffer)
    epoch = [0]
    # exactly the DataModule's loader (datamodule.py: ShardDataModule._loader)
    loader = EpochDataLoader(ds, lambda: (epoch[0], 0), batch_size=None, num_workers=workers,
                             pin_memory=torch.cuda.is_available(), persistent_workers=False,
                             multiprocessing_context="fork" if workers > 0 else None)
    stats = multiprocessing.Array("d", 5)
    samples = batches = 0
    with _timed_stages(stats):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:  # whole epochs (workers start anew in each, as in training)
            it = iter(loader)
            try:
                for batch in it:
                    samples += len(batch)
                    batches += 1
                    if time.perf_counter() - t0 >= seconds:
                        break
            finally:
                del it  # stops the workers
            epoch[0] += 1
        wall = time.perf_counter() - t0
    read, decode, nbytes, inside, waited = stats[:]
    batching = max(0.0, (inside if workers else wall) - waited - decode)
    busy = read + decode + batching
    return dict(workers=workers, samples=samples, batches=batches, wall=wall, nbytes=nbytes,
                read=read / busy if busy else 0.0, decode=decode / busy if busy else 0.0,
                batching=batching / busy if busy else 0.0, epochs=batches / len(ds),
                hidden=1 - waited / read if read else 0.0)


def main(argv: list[str]) -> int:
    path, overrides, seconds = _parse(argv)
    cfg = load_config(path, overrides)
    from .data.shards import list_shards, sample_counts
    from .data.splits import probe
    from .data.urls import local_path

    urls = list_shards(cfg.data.train_shards, "data.train_shards")
    counts, problems = sample_counts(urls, cfg.data.sample_key, "data.train_shards")
    cfg.spec, _ = probe(urls, cfg.data.sample_key, "data.train_shards", cfg.data.count_timeout_s)
    total = sum(counts)
    size = sum(os.path.getsize(local_path(u)) for u in urls) if all(local_path(u) for u in urls) else 0
    print(f"bench-data: {len(urls)} shards, {total:,} samples ({size / 1e6:,.1f} MB), {cfg.data.sample_key} of "
          f"{cfg.spec.describe()}, batch {cfg.data.batch_size}, shuffle {str(cfg.data.shuffle).lower()}; "
          f"one rank, up to {seconds:g} s per run" + (f"; {len(problems)} shard(s) with problems" if problems else ""))
    runs = [_measure(cfg, urls, counts, 0, seconds)]
    if cfg.data.num_workers > 0:
        runs.append(_measure(cfg, urls, counts, cfg.data.num_workers, seconds))
    print(f"{'run':<12} {'workers':>7} {'samples/s':>11} {'MB/s':>8} {'batches/s':>10} {'read':>6} {'decode':>7} "
          f"{'batching':>9} {'read hidden':>12} {'time':>7} {'epochs':>7}")
    for r in runs:
        r["rate"] = r["samples"] / r["wall"] if r["wall"] else 0.0
        print(f"{'one process' if r['workers'] == 0 else 'workers':<12} {r['workers']:>7} {r['rate']:>11,.0f} "
              f"{r['nbytes'] / r['wall'] / 1e6:>8,.0f} {r['batches'] / r['wall']:>10,.1f} {r['read']:>6.0%} "
              f"{r['decode']:>7.0%} {r['batching']:>9.0%} {r['hidden']:>12.0%} {r['wall']:>6.1f}s {r['epochs']:>7.2f}")
    used = runs[-1]  # what training uses: the configured workers
    stage = max(("read", "decode", "batching"), key=lambda k: used[k])
    step_ms = 1000 * cfg.data.batch_size / used["rate"] if used["rate"] else float("inf")
    who = "one process delivers" if used["workers"] == 0 else f"{used['workers']} workers (data.num_workers) deliver"
    note = ""
    if len(runs) > 1 and runs[0]["rate"] > used["rate"]:
        note = (f"; one process alone reads {runs[0]['rate'] / used['rate']:.1f}x faster here (handing batches "
                "between processes costs more than the workers save on this machine)")
    print(f"verdict: {who} {used['rate']:,.0f} samples/s per rank ({used['rate'] / cfg.data.batch_size:,.0f} batches "
          f"of {cfg.data.batch_size}/s): the GPU waits for data when its training step takes less than "
          f"{step_ms:.2f} ms; most loader time goes to {stage} ({used[stage]:.0%}){note}")
    return 0
