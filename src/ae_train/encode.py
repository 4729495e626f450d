"""`ae-train encode`: latents of every sample of some shards, written as WebDataset shards.

    ae-train encode --ckpt CKPT --shards SPEC --out DIR [--devices N] [--batch-size B]

Like `fit`, a launcher checks everything first (one `ae-train: error:` line on bad input), then
starts one rank per device (every GPU; 2 CPU ranks without one) with the same logs under
`DIR/logs/` (`train_<ts>.log`, `debug_rank<N>_<ts>.log`, the same shard lines). Rank r encodes
shards r, r + N, ...: each output shard has the input shard's name and, per sample, `<key>.latent.npy`
(float32 of latent_dim) plus the sample's other members (`.cls`, ...) as they were; nothing is
dropped or repeated. The launcher writes `DIR/ae_index.json` for the output once the ranks are done.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from . import logformat as lf
from .atomic import atomic_write
from .errors import ConfigError
from .exitcodes import ExitCode
from .rundir import RunDir

log = logging.getLogger(__name__)
SPLIT = "encode_shards"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ae-train encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--shards", required=True, help="shard spec (any form data.train_shards takes)")
    p.add_argument("--out", required=True, help="directory for the latent shards (new shard names only)")
    p.add_argument("--devices", type=int, default=0, help="ranks: 0 = every GPU, or 2 CPU ranks without one")
    p.add_argument("--batch-size", type=int, default=256)
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        if e.code:
            raise ConfigError("usage: ae-train encode --ckpt CKPT --shards SPEC --out DIR [--devices N] "
                              "[--batch-size B]") from None
        raise
    if a.batch_size < 1 or a.devices < 0:
        raise ConfigError("--batch-size must be >= 1 and --devices >= 0")
    return a


def _outputs(urls: list[str], out: Path) -> list[Path]:
    from .data.urls import shard_name

    return [out / shard_name(u) for u in urls]


def _encode_shard(model, url: str, dest: Path, key: str, spec, batch_size: int) -> int:
    """Write dest (atomically: atomic.atomic_write); returns the samples encoded."""
    import numpy as np

    from .data.tarwriter import TarWriter
    from .inference import encode_batch, shard_batches

    n = 0
    with atomic_write(dest) as raw:
        with TarWriter(raw, gz=dest.name.endswith((".gz", ".tgz"))) as tar:
            for keys, others, batch in shard_batches(url, key, spec, batch_size):
                for k, parts, z in zip(keys, others, encode_batch(model, batch)):
                    tar.add_array(f"{k}.latent.npy", z.astype(np.float32))
                    for ext, data in parts.items():
                        tar.add(f"{k}.{ext}", data)
                n += len(keys)
    return n


def _rank(a: argparse.Namespace) -> int:
    import torch

    from . import logs
    from .data.shards import list_shards, reason
    from .data.tario import ShardError
    from .inference import load_model, spec_of_model

    rank, world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out = Path(a.out)
    logs.setup_rank_logging(RunDir(out).logs, os.environ[logs.RUN_TS_ENV], rank, world, debug=True)
    device = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    model = load_model(a.ckpt, device)
    spec, key = spec_of_model(model), model.hparams.get("sample_key", "x.npy")
    urls = list_shards(a.shards, "--shards")
    mine = list(range(rank, len(urls), world))
    log.info(lf.ENCODE_PROCESSING.template, len(mine), len(urls), SPLIT, a.ckpt, device)
    t0, total, errors = time.perf_counter(), 0, 0
    dests = _outputs(urls, out)
    for i, dest in ((i, dests[i]) for i in mine):
        log.debug(lf.ENCODE_OPENING.template, urls[i])
        t = time.perf_counter()
        try:
            n = _encode_shard(model, urls[i], dest, key, spec, a.batch_size)
        except (OSError, ShardError) as e:
            errors += 1
            log.error(lf.SHARD_ERROR.template, urls[i], reason(e))
            continue
        total += n
        log.debug(lf.FINISHED_SHARD.template, urls[i], n, time.perf_counter() - t)
    log.info(lf.ENCODE_COMPLETED.template, total, len(mine), errors, time.perf_counter() - t0, SPLIT)
    return ExitCode.FAILED if errors else ExitCode.OK


def _launch(a: argparse.Namespace, argv: list[str]) -> int:
    from . import logs
    from .run import launcher
    from .data.shards import count_shard, list_shards, write_index

    urls = list_shards(a.shards, "--shards")
    out = Path(a.out)
    taken = [p for p in _outputs(urls, out) if p.exists()]
    if taken:
        raise ConfigError(f"--out: {taken[0]} exists; encode never replaces a shard")
    if len(set(_outputs(urls, out))) < len(urls):
        raise ConfigError("--shards: two input shards have the same file name; encode them into separate --out dirs")
    from .inference import load_model

    load_model(a.ckpt)  # a checkpoint that does not load: one line here, not in every rank
    import torch

    devices = a.devices or (torch.cuda.device_count() or 2)
    run = RunDir(out)
    run.logs.mkdir(parents=True, exist_ok=True)
    ts = run.new_timestamp()
    train_log = logs.setup_launcher_logging(run.logs, ts)
    log.info(lf.ENCODING.template, len(urls), a.ckpt, devices, ts, extra=logs.CONSOLE)
    log.info(lf.MONITOR.template, train_log, extra=logs.CONSOLE)
    env = dict(os.environ, **{logs.RUN_TS_ENV: ts, "WORLD_SIZE": str(devices)})
    cmd = [sys.executable, "-m", "ae_train", "encode", *argv]
    procs = {r: subprocess.Popen(cmd, env=dict(env, LOCAL_RANK=str(r)), preexec_fn=launcher.rank_preexec)
             for r in range(devices)}
    code = launcher.watch(procs)
    written = [p for p in _outputs(urls, out) if p.exists()]
    if written:
        write_index({str(p): count_shard(str(p)) for p in written})
    log.info(lf.ENCODED.template, len(written), len(urls), out, extra=logs.CONSOLE)
    return code


def main(argv: list[str]) -> int:
    a = _parse(argv)
    if "LOCAL_RANK" in os.environ:
        return _rank(a)
    return _launch(a, argv)
