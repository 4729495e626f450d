"""`ae-train bench-data`: can this machine's loader feed the GPUs?

    ae-train bench-data --config FILE [--key=value ...] [--seconds=S] [--device=DEVICE]

Runs the real training data path (datamodule.make_loader: the dataset and loader training uses, its
stages timed by the reader itself) over `data.train_shards` for one rank: first in one process (num_workers=0),
then with the configured `data.num_workers` (batches handed over through the batch ring when
data.ring_slots is set, data/ring.py). Each run goes through epochs for `--seconds` (default 20; the last epoch is cut short
there), the workers starting anew every epoch as in training.
Prints samples/s, MB/s of shard files read, batches/s, and where the loader's time goes: reading
(the file reads, most of them done by a read-ahead thread while the previous shard is decoded and
batched), decoding (tar walk, .npy header checks) and batching (gathering and shuffling the rows,
making tensors): shares of the sum of the three, so they add up to 100% even where reading overlaps
the rest; "read hidden" is the part of the read time the loader did not wait for. With workers
these are summed over the workers; handing batches to the main process is not in them (it shows in
samples/s), nor is the time a worker waited for the rank to free a ring slot.

With a CUDA device at hand (or `--device=cpu`, to see the path without one), a third run trains
the configured model on it from the configured workers (one device, AdamW, bf16 autocast when trainer.precision is bf16) and reports samples/s and
the data-wait share: the host's time between the end of one step and the start of the next (taking
the batch, starting its copy to the device) over the whole span, as bench/gpu_train.py measures it.
"""
from __future__ import annotations

import os
import time

from .config import load_config, split_config_arg
from .data.datamodule import make_loader
from .data.stagetimes import StageTimes
from .errors import ConfigError

USAGE = "usage: ae-train bench-data --config FILE [--key=value ...] [--seconds=S] [--device=DEVICE]"


def _parse(args: list[str]) -> tuple[str | None, list[str], float, str | None]:
    path, rest = split_config_arg(args)
    seconds, overrides, device = 20.0, [], None
    for a in rest:
        if a.startswith("--device"):
            device = a.split("=", 1)[1] if "=" in a else ""
            if not (device == "cpu" or device.startswith("cuda")):
                raise ConfigError(f"--device: expected cpu or cuda[:N], got '{device}'")
            continue
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
    return path, overrides, seconds, device


def _loader(cfg, split, workers: int, epoch: list[int], times: StageTimes | None = None):
    """The training loader of one rank of one (datamodule.make_loader), its epoch set by `epoch[0]`."""
    return make_loader(cfg.data, split, "train_shards", lambda: (epoch[0], 0), 0, 1, cfg.seed, cfg.data.shuffle,
                       num_workers=workers, stage_times=times)


def _measure(cfg, split, workers: int, seconds: float) -> dict:
    epoch, times = [0], StageTimes()
    loader = _loader(cfg, split, workers, epoch, times)
    samples = batches = 0
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
    t = times.values()
    read, decode, waited = t["read"], t["decode"], t["read_wait"]
    batching = max(0.0, (t["batches"] - t["slot_wait"] if workers else wall) - waited - decode)
    busy = read + decode + batching
    return dict(workers=workers, samples=samples, batches=batches, wall=wall, nbytes=t["bytes"],
                read=read / busy if busy else 0.0, decode=decode / busy if busy else 0.0,
                batching=batching / busy if busy else 0.0, epochs=batches / len(loader.dataset),
                hidden=1 - waited / read if read else 0.0)


def train_steps(cfg, split, seconds: float, device: str) -> dict:
    """The configured workers feeding training steps of the configured model on `device` for about
    `seconds` (after 10 warm-up steps): samples/s and the host's share of time waiting for batches."""
    import torch

    from .model import AutoEncoder

    m = cfg.model
    model = AutoEncoder(m.input_dim, m.latent_dim, m.hidden_dims, m.activation, arch=m.arch,
                        input_shape=m.input_shape, conv_channels=m.conv_channels).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=m.lr, weight_decay=m.weight_decay)
    dtype = torch.bfloat16 if cfg.trainer.precision.startswith("bf16") else None
    epoch, cuda = [0], device.startswith("cuda")
    loader = _loader(cfg, split, cfg.data.num_workers, epoch)
    steps, wait, t0, warm = 0, 0.0, None, 10
    while t0 is None or time.perf_counter() - t0 < seconds:
        it = iter(loader)
        try:
            ready = time.perf_counter()
            for batch in it:
                if t0 is not None:
                    wait += time.perf_counter() - ready
                x = model.inputs(batch.to(device, non_blocking=True))
                with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                    loss = torch.nn.functional.mse_loss(model(x), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                if t0 is None and steps == warm:  # once: the clock starts after the warm-up steps
                    if cuda:
                        torch.cuda.synchronize()
                    t0, steps = time.perf_counter(), 0
                elif t0 is not None and time.perf_counter() - t0 >= seconds:
                    break
                ready = time.perf_counter()
        finally:
            del it
        epoch[0] += 1
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    name = torch.cuda.get_device_name(torch.device(device)) if cuda else device
    return dict(device=name, steps=steps, wall=wall, rate=steps * cfg.data.batch_size / wall, wait=wait / wall)


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        from .config import keys_help

        about = __doc__.strip().split("\n\n", 2)[2]  # after the title and the usage line
        print(f"{USAGE}\n\n{about}\n\nThe config's keys (the data.* ones matter here):\n\n{keys_help()}")
        return 0
    path, overrides, seconds, device = _parse(argv)
    cfg = load_config(path, overrides)
    from . import logs
    from .data.splits import resolve
    from .data.urls import local_path

    logs.set_tag("bench-data")  # its DataLoader workers stamp their log records with it
    cfg.data.val_shards = ""  # one split is measured: the training one
    split = resolve(cfg).splits["train_shards"]
    urls, counts, problems, spec = split.urls, split.counts, split.problems, split.spec
    total = sum(counts)
    size = sum(os.path.getsize(local_path(u)) for u in urls) if all(local_path(u) for u in urls) else 0
    print(f"bench-data: {len(urls)} shards, {total:,} samples ({size / 1e6:,.1f} MB), {cfg.data.sample_key} of "
          f"{spec.describe()}, batch {cfg.data.batch_size}, shuffle {str(cfg.data.shuffle).lower()}; "
          f"one rank, up to {seconds:g} s per run" + (f"; {len(problems)} shard(s) with problems" if problems else ""))
    runs = [_measure(cfg, split, 0, seconds)]
    if cfg.data.num_workers > 0:
        runs.append(_measure(cfg, split, cfg.data.num_workers, seconds))
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
    if len(runs) > 1 and runs[0]["rate"] > 1.1 * used["rate"]:
        # Without workers the rank loads in the training step's own thread (load + step per batch);
        # workers load while the step runs (the slower of the two per batch).
        extra = 1000 * cfg.data.batch_size * (1 / used["rate"] - 1 / runs[0]["rate"])
        note = (f"; one process alone reads {runs[0]['rate'] / used['rate']:.1f}x faster here, but it loads in the "
                f"training step's own thread: the workers, loading while the step runs, are faster for any step "
                f"longer than {extra:.2f} ms")
    print(f"verdict: {who} {used['rate']:,.0f} samples/s per rank ({used['rate'] / cfg.data.batch_size:,.0f} batches "
          f"of {cfg.data.batch_size}/s): the GPU waits for data when its training step takes less than "
          f"{step_ms:.2f} ms; most loader time goes to {stage} ({used[stage]:.0%}){note}")
    import torch

    if device is None and torch.cuda.is_available():
        device = "cuda"
    if device and cfg.data.num_workers > 0:
        g = train_steps(cfg, split, seconds, device)
        print(f"steps: {g['device']}: {cfg.data.num_workers} workers feeding the {cfg.model.arch} autoencoder "
              f"(batch {cfg.data.batch_size}, {cfg.trainer.precision}): {g['rate']:,.0f} samples/s, "
              f"{g['steps'] / g['wall']:,.1f} steps/s; data wait {g['wait']:.1%} of the time")
    return 0
