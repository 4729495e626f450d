"""Train the MLP autoencoder from shards on one GPU for a fixed number of steps: samples/s and the
share of the time spent waiting for data.

    python bench/gpu_train.py [--steps 300] [--workers 8] [--shards 16] [--per-shard 8192] [--dir DIR]
    python bench/gpu_train.py --ring-slots 0                          # the DataLoader's own hand-over
    python bench/gpu_train.py --device cpu --steps 20 --small        # smoke check without a GPU

The model and batch are those of configs/large_scale.yaml: input 1024, hidden 2048-1024-512, latent
64, batch 4096, bf16-mixed, `--workers` DataLoader workers with pinned memory, the real DataModule
(ShardDataModule: equalized plan, ShardBatches, workers restarted every epoch, batches handed over
through the pinned batch ring, data/ring.py, unless `--ring-slots 0`). Shards (webdataset
TarWriter, one float32 `x.npy` per sample) are written to a temporary directory, or to DIR and
reused. `--small` shrinks everything (input 64, batch 256, 2 workers, fp32) for a quick CPU check.

Timing starts after `--warmup` steps (CUDA start-up, first worker fork) and ends after the last step,
both after a device synchronize. "Data wait" is the host's time between the end of one training step
and the start of the next (fetching the batch and copying it to the device) over the timed span: with
asynchronous kernels the host runs ahead of the GPU, so a high share means the GPU waited for data.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from ae_train import logs  # noqa: E402
from ae_train.config import Config  # noqa: E402
from ae_train.data.datamodule import ShardDataModule  # noqa: E402
from ae_train.data.make import synthetic, write_shards  # noqa: E402
from ae_train.data.shards import INDEX_NAME  # noqa: E402
from ae_train.data.splits import resolve  # noqa: E402
from ae_train.model import AutoEncoder  # noqa: E402

warnings.filterwarnings("ignore")
logs.set_tag("gpu_train")  # its DataLoader workers stamp their log records "gpu_train Worker w/K"


class Clock(Callback):
    """Host time waiting for batches, from step `warmup` on; device-synchronized start and end."""

    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.cuda = warmup, cuda
        self.t0 = self.t_end = self.t_ready = 0.0
        self.wait, self.steps = 0.0, 0

    def _now(self) -> float:
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 and trainer.global_step >= self.warmup:  # from the end of step `warmup` on
            self.wait += self._now() - self.t_ready

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # steps done, this one included
        if step == self.warmup:
            if self.cuda:
                torch.cuda.synchronize()
            self.t0 = self._now()
        elif step > self.warmup:
            self.steps = step - self.warmup
        self.t_ready = self._now()

    def on_train_end(self, trainer, pl_module):
        if self.cuda:
            torch.cuda.synchronize()
        self.t_end = self._now()


def shards(directory: Path, n: int, per_shard: int, dim: int) -> str:
    index = directory / INDEX_NAME
    want = {f"train-{i:06d}.tar" for i in range(n)}
    if index.is_file():
        known = json.loads(index.read_text()).get("shards", {})
        if want <= set(known) and all(known[k]["exts"].get("x.npy") == per_shard for k in want):
            return f"{directory}/train-{{000000..{n - 1:06d}}}.tar"
    t = time.perf_counter()
    for i in range(n):  # one shard at a time: memory stays at one shard's samples
        write_shards(str(directory / f"part{i}"), "train", synthetic(per_shard, dim, 16, i), [per_shard])
        os.replace(directory / f"part{i}" / "train-000000.tar", directory / f"train-{i:06d}.tar")
        (directory / f"part{i}" / INDEX_NAME).unlink()
        (directory / f"part{i}").rmdir()
    from ae_train.data.shards import write_index
    from ae_train.data.shards import count_shard
    write_index({str(directory / k): count_shard(str(directory / k)) for k in sorted(want)})
    print(f"wrote {n} shards x {per_shard} samples of dim {dim} in {time.perf_counter() - t:.0f}s", flush=True)
    return f"{directory}/train-{{000000..{n - 1:06d}}}.tar"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=8192)
    p.add_argument("--precision", default=None, help="default bf16-mixed on cuda, 32-true on cpu")
    p.add_argument("--small", action="store_true", help="input 64, batch 256, 2 workers, 4 x 2048 samples")
    p.add_argument("--dir", help="shard directory to (re)use")
    p.add_argument("--ring-slots", type=int, default=-1,
                   help="batch ring slots per worker (default: prefetch_factor + 3); 0: the DataLoader's own hand-over")
    a = p.parse_args()
    a.warmup = max(1, a.warmup)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_train: no CUDA device here; run with --device cpu --small for a smoke check", file=sys.stderr)
        return 2
    cfg = Config()
    if a.small:
        cfg.model.input_dim, cfg.model.hidden_dims, cfg.model.latent_dim = 64, [128, 64], 8
        cfg.data.batch_size, a.workers, a.shards, a.per_shard = 256, min(a.workers, 2), 4, 2048
        a.warmup = min(a.warmup, max(1, a.steps // 4))
    else:
        cfg.model.input_dim, cfg.model.hidden_dims, cfg.model.latent_dim = 1024, [2048, 1024, 512], 64
        cfg.data.batch_size = 4096
    cfg.data.num_workers, cfg.data.val_shards = a.workers, ""
    precision = a.precision or ("bf16-mixed" if a.device == "cuda" else "32-true")
    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="ae_gpu_train_")
    directory = Path(a.dir or tmp.name)
    directory.mkdir(parents=True, exist_ok=True)
    cfg.data.train_shards = shards(directory, a.shards, a.per_shard, cfg.model.input_dim)

    pl.seed_everything(0, verbose=False)
    facts = resolve(cfg)
    cfg.data.ring_slots = a.ring_slots  # -1: prefetch_factor + 3 per worker (data.ring_slots' auto)
    dm = ShardDataModule(cfg.data, facts, cfg.seed, 0)
    model = AutoEncoder(cfg.model.input_dim, cfg.model.latent_dim, cfg.model.hidden_dims, cfg.model.activation,
                        cfg.model.lr, cfg.model.weight_decay, cfg.model.warmup_steps, total_steps=a.steps)
    clock = Clock(a.warmup, a.device == "cuda")
    trainer = pl.Trainer(accelerator="gpu" if a.device == "cuda" else "cpu", devices=1, max_steps=a.steps,
                         precision=precision, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                         limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    span = clock.t_end - clock.t0
    batch = cfg.data.batch_size
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    per_epoch = dm.steps_per_epoch(1)
    print(f"device: {name}; torch {torch.__version__}, precision {precision}")
    print(f"model: input {cfg.model.input_dim}, hidden {cfg.model.hidden_dims}, latent {cfg.model.latent_dim}; "
          f"batch {batch}; {a.workers} workers, pin_memory {torch.cuda.is_available()}, "
          f"{'the DataLoader hand-over' if a.ring_slots == 0 else 'batch ring'}; "
          f"{a.shards} shards x {a.per_shard} samples ({per_epoch} steps per epoch)")
    print(f"timed: steps {a.warmup + 1}..{a.warmup + clock.steps} ({clock.steps} steps, {span:.2f}s, "
          f"{clock.steps / per_epoch:.1f} epochs)")
    print(f"samples/s {clock.steps * batch / span:,.0f}; steps/s {clock.steps / span:,.1f}; "
          f"data wait {100 * clock.wait / span:.1f}% of the time")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
