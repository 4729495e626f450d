"""`ae-train evaluate`: reconstruction error of a checkpoint on shards, every sample once.

    ae-train evaluate --ckpt CKPT --shards SPEC [--batch-size N] [--out FILE.json]

Prints the mean squared error over all samples and per shard, and for images also the PSNR (dB) and
SSIM of the reconstructions (torchmetrics; each image's score, averaged), and writes the same as JSON
(`--out`, default `eval-<ckpt name>-<time>.json` beside the checkpoint; an existing file is never
replaced). The error of a sample is the mean of its squared differences, as `val_loss` measures it,
so on validation shards that training read whole (no samples dropped or padded) the two agree. Images
are prepared as the training run prepared them (its data.image_size and data.image_mode, saved in
the checkpoint), with the centre crop.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .errors import ConfigError
from .exitcodes import ExitCode


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ae-train evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint of `ae-train fit`")
    p.add_argument("--shards", required=True, help="shard spec (any form data.train_shards takes)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="JSON file to write (default: beside the checkpoint)")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        if e.code:
            raise ConfigError("usage: ae-train evaluate --ckpt CKPT --shards SPEC [--batch-size N] [--out FILE]") from None
        raise
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {a.batch_size}")
    return a


def main(argv: list[str]) -> int:
    a = _parse(argv)
    from .data.shards import list_shards, reason
    from .data.tario import ShardError
    from .inference import load_model, scores, shard_batches, spec_of_model

    urls = list_shards(a.shards, "--shards")
    out = Path(a.out) if a.out else Path(a.ckpt).with_name(
        f"eval-{Path(a.ckpt).stem}-{time.strftime('%Y%m%d_%H%M%S')}.json")
    if out.exists():
        raise ConfigError(f"--out: {out} exists; evaluate never replaces a file")
    model = load_model(a.ckpt)
    spec, key = spec_of_model(model), model.hparams.get("sample_key", "x.npy")
    per_shard, totals, errors, total_n = [], {}, {}, 0
    for url in urls:
        sums, n = {}, 0
        try:
            for _, _, batch in shard_batches(url, key, spec, a.batch_size):
                for name, values in scores(model, batch).items():
                    sums[name] = sums.get(name, 0.0) + float(values.sum())
                n += len(batch)
        except (OSError, ShardError) as e:
            errors[url] = reason(e)
            print(f"ae-train: shard {url}: {reason(e)} (left out)")
            continue
        means = {name: v / n for name, v in sums.items()} if n else {"mse": None}
        per_shard.append({"url": url, "samples": n, **means})
        for name, v in sums.items():
            totals[name] = totals.get(name, 0.0) + v
        total_n += n
        print(f"{url}: {n} samples, {_scores_text(means)}")
    if total_n == 0:
        raise ConfigError(f"--shards: no sample with '{key}' could be read from {len(urls)} shard(s)")
    means = {name: v / total_n for name, v in totals.items()}
    result = {"ckpt": str(a.ckpt), "sample_key": key, "samples": total_n, **means, "shards": per_shard,
              "errors": errors}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{_scores_text(means)} over {total_n} samples of {len(per_shard)} shard(s); wrote {out}")
    return ExitCode.FAILED if errors else ExitCode.OK


def _scores_text(means: dict) -> str:
    """`mse 0.0123, psnr 24.31 dB, ssim 0.8123` (what was measured; `mse nan` for a shard without samples)."""
    if means.get("mse") is None:
        return "mse nan"
    parts = [f"mse {means['mse']:.6g}"]
    if "psnr" in means:
        parts.append(f"psnr {means['psnr']:.2f} dB")
    if "ssim" in means:
        parts.append(f"ssim {means['ssim']:.4f}")
    return ", ".join(parts)
