"""Image autoencoders' data path on ~256 px JPEGs: ae-train's resizing decoder against the plain
webdataset pipeline, and how close its reduced-scale decode is to a full one.

    python bench/jpeg_resize.py [--shards 8] [--per-shard 1000] [--shorter 256] [--size 64] [--batch 256]
                                [--workers 2] [--seconds 10] [--rounds 3] [--quality 300] [--dir DIR]

Writes plain `.tar` shards as img2dataset writes them with resize_mode=keep_ratio at 256 (shorter side
256, or any in a range with `--shorter 224,288`; the longer up to 1.5x, either orientation; JPEG
quality 90; `.txt` and `.json` beside) of
photo-like images (data/make.py `photo_like`: crops of colour 1/f noise, which cost what photos cost
to decode) into a temporary directory (or DIR, reused). Then, in one run:
1. CPU time per image in one process: Pillow's full decode + resize + crop; ours with Pillow's draft
   only; ours (simplejpeg's n/8 scales) and the reduced decode alone within it, interleaved image by image;
   the share of images that are a window of the reduced decode (a slice, no resize);
2. quality over `--quality` images: PSNR of ours against a full decode with the same antialiased
   (bicubic) resize and crop; mean and worst image;
3. the plain webdataset pipeline: `wds.WebDataset(urls).decode("pil").to_tuple("jpg")`, each image
   converted to RGB, its shorter side resized to `--size` (bicubic, antialiased), centre-cropped, as a
   uint8 C x H x W array, `.batched(B)`, a DataLoader with `--workers` persistent workers; the first
   pass warms up, the second is timed;
4. `ae-train bench-data --data.image_size=SIZE --data.num_workers=W` on the same shards: its `workers` row;
5. the loader in one process with the image decode taken out: what the tar walk, ordering and batching
   cost per sample, local shards walked in place (mapped) vs read as a stream in 1 MB chunks;
3 and 4 alternate `--rounds` times (the machine's other load drifts). Each round's ratio compares two
passes measured back to back, under the same load; the verdict is the median of these paired ratios.
The ratio of the two medians is printed too: it divides rates measured minutes apart, and on a shared
machine the plain pipeline's own rate moves by 15% between rounds (docs/BENCHMARKS.md, "Images").
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ae_train.atomic import atomic_write  # noqa: E402
from ae_train.data import preprocess  # noqa: E402
from ae_train.data.make import noise_textures, photo_like  # noqa: E402


def make(directory: Path, shards: int, per_shard: int, shorter: tuple[int, int]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    urls = [str(directory / f"img-{i:05d}.tar") for i in range(shards)]
    if all(os.path.exists(u) for u in urls):
        return urls
    rng, textures = np.random.default_rng(0), noise_textures(16, 512, 0)
    for s, url in enumerate(urls):
        with atomic_write(url) as f, tarfile.open(fileobj=f, mode="w") as tar:
            for i in range(per_shard):
                img = photo_like(rng, textures, shorter)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, "JPEG", quality=90)
                key = f"{s:05d}{i:04d}"
                meta = {"key": key, "width": img.shape[1], "height": img.shape[0], "status": "success"}
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"caption {key}".encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return urls


def practitioner(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side resized (bicubic, antialiased), centre crop, uint8 C x H x W: the usual recipe."""
    img = img.convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                     Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def jpegs(urls: list[str], limit: int) -> list[bytes]:
    out = []
    with tarfile.open(urls[0]) as tar:
        for m in tar:
            if m.name.endswith(".jpg"):
                out.append(tar.extractfile(m).read())
                if len(out) == limit:
                    break
    return out


def per_image(data: list[bytes], size: int, rounds: int = 3) -> dict[str, float]:
    """CPU time per image (µs, this process, summed over interleaved rounds: steady under other load) of
    a full decode + practitioner resize, ours with Pillow's draft only, ours (simplejpeg's n/8 scales),
    and the libjpeg-turbo decode alone inside ours."""
    out = np.empty((3, size, size), np.uint8)
    turbo = preprocess.simplejpeg
    spent = {"full": 0.0, "draft": 0.0, "ours": 0.0, "decode": 0.0}
    for _ in range(rounds):
        for d in data:
            t0 = time.process_time()
            practitioner(Image.open(io.BytesIO(d)), size)
            t1 = time.process_time()
            preprocess.simplejpeg = None
            preprocess.image_into(d, out, "RGB")
            preprocess.simplejpeg = turbo
            t2 = time.process_time()
            preprocess.image_into(d, out, "RGB")
            t3 = time.process_time()
            reduced_decode(d, size)
            t4 = time.process_time()
            spent["full"] += t1 - t0
            spent["draft"] += t2 - t1
            spent["ours"] += t3 - t2
            spent["decode"] += t4 - t3
    return {k: 1e6 * v / (rounds * len(data)) for k, v in spent.items()}


def reduced_decode(d: bytes, size: int) -> tuple[np.ndarray, float, tuple]:
    """Ours up to the pixels: (libjpeg-turbo's reduced-scale decode, its scale, the crop box in it)."""
    height, width, _, _ = preprocess.simplejpeg.decode_jpeg_header(d)
    cover = size / min(height, width)
    pixels, scale = preprocess._turbo_scaled(d, "RGB", height, width, math.ceil(height * cover),
                                             math.ceil(width * cover))
    return pixels, scale, tuple(v * scale for v in preprocess.crop_box(width, height, size, size, None))


def window_share(data: list[bytes], size: int) -> float:
    """The fraction of images whose crop is whole pixels of the reduced decode: a slice, no resize."""
    return sum(preprocess._window(reduced_decode(d, size)[2], size, size) is not None for d in data) / len(data)


def beside_decode(directory: Path, size: int, batch: int) -> dict[str, float]:
    """CPU µs per sample of the loader in one process with the image decode taken out (the tar walk,
    ordering, batching): local shards walked in place (mapped) vs read as a stream in 1 MB chunks."""
    from ae_train.data import stream

    spent, decode, mapper = {}, preprocess.image_into, stream.map_open
    preprocess.image_into = lambda *args, **kwargs: None
    try:
        for name, patch in (("mapped", mapper), ("chunks", lambda f: None)) * 2:
            stream.map_open = patch
            _, us, _ = ours_cpu(directory, size, batch, 0)
            spent[name] = min(spent.get(name, us), us)
    finally:
        preprocess.image_into, stream.map_open = decode, mapper
    return spent


def quality(data: list[bytes], size: int) -> tuple[float, float]:
    """(mean, worst) PSNR in dB of ours against a full decode with the same resize and crop."""
    out, psnrs = np.empty((3, size, size), np.uint8), []
    for d in data:
        preprocess.image_into(d, out, "RGB")
        full = Image.open(io.BytesIO(d)).convert("RGB")
        box = preprocess.crop_box(full.width, full.height, size, size, None)
        ref = np.asarray(full.resize((size, size), Image.Resampling.BICUBIC, box=box)).transpose(2, 0, 1)
        mse = np.mean((out.astype(np.float64) - ref) ** 2)
        psnrs.append(99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse))
    return float(np.mean(psnrs)), float(np.min(psnrs))


def tree_cpu() -> float:
    """CPU seconds used so far by this process and its live children (DataLoader workers)."""
    me, total = os.getpid(), time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def timed_pass(loader) -> tuple[float, float, int]:
    """(samples/s, CPU µs per sample over this process and its workers, samples) of one pass."""
    t0, c0, n = time.perf_counter(), tree_cpu(), 0
    for batch in loader:
        n += len(batch[0] if isinstance(batch, (list, tuple)) else batch)
    cpu, wall = tree_cpu() - c0, time.perf_counter() - t0
    return n / wall, 1e6 * cpu / n, n


def plain_webdataset(urls: list[str], size: int, batch: int, workers: int) -> tuple[float, float, int]:
    import webdataset as wds
    from torch.utils.data import DataLoader

    ds = (wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg")
          .map_tuple(lambda img: practitioner(img, size)).batched(batch, partial=False))
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:  # first pass: workers started, files in the page cache
        pass
    return timed_pass(loader)


def ours_cpu(directory: Path, size: int, batch: int, workers: int) -> tuple[float, float, int]:
    """bench-data's workers path (datamodule.make_loader) in this process: its second epoch, timed."""
    from ae_train import logs
    from ae_train.config import load_config
    from ae_train.data.datamodule import make_loader
    from ae_train.data.splits import resolve

    logs.set_tag("bench")
    cfg = load_config(None, [f"--data.train_shards={directory}/img-*.tar", "--data.val_shards=",
                             "--data.sample_key=jpg", f"--data.image_size={size}", f"--data.batch_size={batch}",
                             f"--data.num_workers={workers}", "--model.arch=conv"])
    epoch = [0]
    loader = make_loader(cfg.data, resolve(cfg).splits["train_shards"], "train_shards", lambda: (epoch[0], 0), 0, 1,
                         cfg.seed, True)
    for _ in loader:  # epoch 0: workers forked, files in the page cache
        pass
    epoch[0] = 1
    try:
        return timed_pass(loader)
    finally:
        loader.close()


def ours(directory: Path, size: int, batch: int, workers: int, seconds: float) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "ae_train", "bench-data", f"--data.train_shards={directory}/img-*.tar",
           "--data.val_shards=", "--data.sample_key=jpg", f"--data.image_size={size}", f"--data.batch_size={batch}",
           f"--data.num_workers={workers}", "--model.arch=conv", "--model.input_dim=0", f"--seconds={seconds}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=directory)
    if r.returncode:
        raise SystemExit(f"bench-data failed:\n{r.stdout}{r.stderr}")
    row = next(line for line in r.stdout.splitlines() if line.startswith("workers "))
    return float(re.split(r"\s+", row)[2].replace(",", "")), r.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--shorter", default="256", help="shorter side of the JPEGs: N, or LOW,HIGH")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10, help="bench-data's --seconds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quality", type=int, default=300, help="images whose PSNR is measured")
    p.add_argument("--dir", help="shard directory to (re)use instead of a temporary one")
    a = p.parse_args()
    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="ae_bench_jpeg_")
    directory = Path(a.dir or tmp.name)
    directory.mkdir(parents=True, exist_ok=True)
    low, _, high = a.shorter.partition(",")
    shorter = (int(low), int(high or low))
    urls = make(directory, a.shards, a.per_shard, shorter)
    sample = jpegs(urls, max(a.quality, 300))
    import PIL
    import PIL.features
    import webdataset

    print(f"machine: {os.cpu_count()} CPUs, Pillow {PIL.__version__} (libjpeg-turbo "
          f"{PIL.features.version('libjpeg_turbo')}), webdataset {webdataset.__version__}")
    sides = "..".join(map(str, sorted(set(shorter))))
    print(f"shards: {len(urls)} x {a.per_shard:,} JPEGs, shorter side {sides}, "
          f"mean {np.mean([len(d) for d in sample]) / 1e3:.1f} kB"
          f" (+ .txt, .json) in plain .tar; {a.size}x{a.size} RGB, batch {a.batch}, {a.workers} workers")
    us = per_image(sample[:300], a.size)
    print(f"\n1. CPU per image, one process: full decode + resize + crop {us['full']:,.0f} us; Pillow draft + one "
          f"resize {us['draft']:,.0f} us ({us['full'] / us['draft']:.2f}x); ours, simplejpeg n/8 + a window or one resize "
          f"{us['ours']:,.0f} us ({us['full'] / us['ours']:.2f}x), of which libjpeg-turbo's reduced decode "
          f"{us['decode']:,.0f} us; {window_share(sample[:300], a.size):.0%} of the images are a window of it (a "
          f"slice, no resize)")
    mean, worst = quality(sample[:a.quality], a.size)
    print(f"2. quality, {a.quality} images: ours vs full decode + the same bicubic resize and crop: "
          f"PSNR mean {mean:.1f} dB, worst image {worst:.1f} dB")
    wds_rates, our_rates = [], []
    for r in range(a.rounds):
        wds_rate, _, n = plain_webdataset(urls, a.size, a.batch, a.workers)
        rate, text = ours(directory, a.size, a.batch, a.workers, a.seconds)
        wds_rates.append(wds_rate)
        our_rates.append(rate)
        print(f"round {r + 1}: 3. plain webdataset, {a.workers} persistent workers, second pass ({n:,} samples): "
              f"{wds_rate:,.0f} samples/s; 4. ae-train bench-data --data.image_size={a.size}, workers row: "
              f"{rate:,.0f} samples/s ({rate / wds_rate:.2f}x)")
    print("\nlast bench-data output:\n   " + "\n   ".join(text.strip().splitlines()))
    wds_med, our_med = statistics.median(wds_rates), statistics.median(our_rates)
    paired = sorted(o / w for o, w in zip(our_rates, wds_rates))
    ratio = statistics.median(paired)
    print(f"\nmedians: plain webdataset {wds_med:,.0f} samples/s, ae-train {our_med:,.0f} samples/s: "
          f"ratio of the medians {our_med / wds_med:.2f}x")
    print(f"ratio ae-train / plain webdataset, {a.workers} workers, median of the rounds' paired ratios: {ratio:.2f}x "
          f"({paired[0]:.2f}x..{paired[-1]:.2f}x)   target >= 3x: {'met' if ratio >= 3 else 'NOT met'}")
    _, wds_us, _ = plain_webdataset(urls, a.size, a.batch, a.workers)
    _, our_us, _ = ours_cpu(directory, a.size, a.batch, a.workers)
    print(f"CPU per sample, all processes of the loader (main + {a.workers} workers), a whole pass: plain webdataset "
          f"{wds_us:,.0f} us, ae-train {our_us:,.0f} us: {wds_us / our_us:.2f}x less CPU (what the ratio would be "
          f"with the cores to themselves)")
    beside = beside_decode(directory, a.size, a.batch)
    print(f"the loader beside the decode (walk, order, batching), one process, CPU per sample: {beside['mapped']:,.0f} us "
          f"with local shards walked in place, {beside['chunks']:,.0f} us read in 1 MB chunks")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
