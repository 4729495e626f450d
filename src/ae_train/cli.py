"""`ae-train` subcommands: fit, make-shards, index, config here; diagnose, collect, bench-data, encode,
evaluate and export dispatched to their modules (imported only when asked for).

Bad input ends with one line `ae-train: error: ...` on stderr and exit code 2 (ExitCode.BAD_INPUT), never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .config import keys_help, load_config, split_config_arg, to_yaml
from .errors import ConfigError
from .exitcodes import ExitCode, exit_process

USAGE = """usage: ae-train <command> [args]

commands:
  fit [--config FILE] [--key=value ...]   train (launches one process per device; see `ae-train config --help`)
  make-shards --out DIR [options]         write WebDataset shards from a .npy file or synthetic data
  index SHARDS                            count the samples of existing shards into ae_index.json
  diagnose LOGS_DIR [--run TS] [--json] [--plot PNG] [--stall-after S]
                                          say which rank is stuck where, from the logs
  collect LOGS_DIR [--run TS] [-o FILE]   bundle logs, config and system state for a bug report
  bench-data --config FILE [--key=value]  can the data path feed the GPUs? samples/s and MB/s of it
  encode --ckpt CKPT --shards SPEC --out DIR   latents of every sample, as WebDataset shards
  evaluate --ckpt CKPT --shards SPEC      reconstruction error (mean and per shard), as JSON
  export --ckpt CKPT --out DIR            encoder and decoder as torch.export programs
  config [--config FILE] [--key=value]    print the resolved config; --help lists every key
"""


def _is_rank() -> bool:
    """Started as a rank: by our launcher or torchrun (LOCAL_RANK/RANK), or as an srun task of a
    multi-task SLURM step. Otherwise this process is the launcher."""
    if "LOCAL_RANK" in os.environ or "RANK" in os.environ:
        return True
    return "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 \
        and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


FIT_USAGE = """usage: ae-train fit [--config FILE] [--key=value ...]

Train an autoencoder: the config and the data are checked first (one `ae-train: error:` line on bad
input), then one rank starts per device (every GPU, or 2 CPU ranks without one). Keys come from the
defaults, then --config FILE (YAML), then --key=value flags (later flags win); `ae-train config`
prints the resolved config. ./train_ae.sh runs this with --debug=true --resume=auto (and the demo
data when no --config is given). Logs: <output_dir>/logs/ (docs/LOGGING.md).

"""


def wants_help(args: list[str]) -> bool:
    return "--help" in args or "-h" in args


def cmd_fit(args: list[str]) -> int:
    if wants_help(args):
        from .lightning_args import describe

        print(FIT_USAGE + keys_help() + "\n" + describe())
        return ExitCode.OK
    path, overrides = split_config_arg(args)
    cfg = load_config(path, overrides)
    if _is_rank():
        from .run.startup import open_rank_log
        open_rank_log(cfg)  # from the first second, before torch is imported and the process group exists
        from . import train
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's summary then names the exception, not <N/A>
            from torch.distributed.elastic.multiprocessing.errors import record
            return record(train.main)(cfg)
        return train.main(cfg)
    from .run import launcher
    return launcher.launch(cfg, args)


def cmd_config(args: list[str]) -> int:
    if wants_help(args):
        from .lightning_args import describe

        print("usage: ae-train config [--config FILE] [--key=value ...]   (prints the resolved config as YAML)\n")
        print(keys_help() + "\n" + describe())
        return ExitCode.OK
    path, overrides = split_config_arg(args)
    print(to_yaml(load_config(path, overrides)), end="")
    return ExitCode.OK


def cmd_make_shards(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ae-train make-shards", description="Write WebDataset shards of x.npy vectors.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--from", dest="source", help=".npy file of shape (N, D) to shard; synthetic data if absent")
    p.add_argument("--prefix", default="train", help="shard name prefix (default train)")
    p.add_argument("--num", type=int, default=4000, help="synthetic samples (default 4000)")
    p.add_argument("--dim", type=int, default=64, help="synthetic vector length (default 64)")
    p.add_argument("--rank", type=int, default=6, help="rank of the synthetic data (default 6)")
    p.add_argument("--per-shard", type=int, default=500, help="samples per shard (default 500)")
    p.add_argument("--sizes", help="explicit comma-separated samples per shard, e.g. 200,13,1,77,300")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-key", default="x.npy")
    p.add_argument("--demo", action="store_true", help="the demo set: 8 train shards + 2 val shards, dim 64")
    p.add_argument("--images", action="store_true", help="synthetic images (.png + .cls in .tar.gz) instead of vectors")
    p.add_argument("--size", type=int, default=32, help="synthetic image height and width (default 32)")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3), help="synthetic image channels (default 3)")
    p.add_argument("--from-images", dest="image_dir", help="a directory of .png/.jpg images (sub-directories: classes)")
    p.add_argument("--images-demo", action="store_true", help="the image demo set: 4 train + 1 val .tar.gz shards")
    a = p.parse_args(args)
    if a.images or a.image_dir or a.images_demo:
        return _make_image_shards(a)
    import numpy as np

    from .data.make import split_sizes, synthetic, write_shards

    jobs = []
    if a.demo:
        jobs = [("train", synthetic(4000, 64, 6, 0), split_sizes(4000, 500)),
                ("val", synthetic(1000, 64, 6, 1), split_sizes(1000, 500))]
    else:
        sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else None
        if a.source:
            if not os.path.isfile(a.source):
                raise ConfigError(f"--from: file not found: {a.source}")
            data = np.load(a.source, mmap_mode="r")
            data = data.reshape(len(data), -1)
        else:
            data = synthetic(sum(sizes) if sizes else a.num, a.dim, a.rank, a.seed)
        jobs = [(a.prefix, data, sizes or split_sizes(len(data), a.per_shard))]
    for prefix, data, sizes in jobs:
        try:
            paths = write_shards(a.out, prefix, data, sizes, a.sample_key)
        except (FileExistsError, ValueError) as e:
            raise ConfigError(str(e)) from None
        print(f"wrote {len(paths)} shards ({sum(sizes)} samples of dim {data.shape[1]}) to {a.out}/{prefix}-*.tar")
    return ExitCode.OK


def _make_image_shards(a) -> int:
    from .data.make import folder_image_samples, split_sizes, synthetic_image_samples, write_image_shards

    if a.images_demo:
        jobs = [("train", synthetic_image_samples(2000, 32, 3, 0), split_sizes(2000, 500)),
                ("val", synthetic_image_samples(400, 32, 3, 1), [400])]
    elif a.image_dir:
        if not os.path.isdir(a.image_dir):
            raise ConfigError(f"--from-images: directory not found: {a.image_dir}")
        samples, n = folder_image_samples(a.image_dir)
        if n == 0:
            raise ConfigError(f"--from-images: no .png/.jpg files under {a.image_dir}")
        jobs = [(a.prefix, samples, split_sizes(n, a.per_shard))]
    else:
        if a.size < 4:
            raise ConfigError(f"--size must be >= 4, got {a.size}")
        jobs = [(a.prefix, synthetic_image_samples(a.num, a.size, a.channels, a.seed), split_sizes(a.num, a.per_shard))]
    for prefix, samples, sizes in jobs:
        try:
            paths = write_image_shards(a.out, prefix, samples, sizes)
        except (FileExistsError, ValueError) as e:
            raise ConfigError(str(e)) from None
        print(f"wrote {len(paths)} shards ({sum(sizes)} images) to {a.out}/{prefix}-*.tar.gz")
    return ExitCode.OK


def cmd_index(args: list[str]) -> int:
    if not args or args[0].startswith("-"):
        raise ConfigError("usage: ae-train index SHARDS (brace pattern, glob, directory, list file or URLs: "
                          "the index is written beside local and s3:// shards)")
    from .data.shards import count_shard, list_shards, reason, write_index
    from .data.tario import ShardError

    urls = list_shards(args[0], "index")
    entries, bad = {}, 0
    for url in urls:
        try:
            entries[url] = count_shard(url)
        except (OSError, ShardError) as e:
            bad += 1
            print(f"ae-train: shard {url}: {reason(e)} (not indexed)", file=sys.stderr)
    try:
        written = write_index(entries)
    except OSError as e:
        raise ConfigError(f"index: {reason(e)}") from None
    for path in written:
        print(f"wrote {path}")
    print(f"indexed {len(entries)} shards, {sum(e['samples'] for e in entries.values())} samples; {bad} unreadable")
    return ExitCode.FAILED if bad else ExitCode.OK


def one_line(message: str) -> str:
    """The error on one line: a newline or control character the user typed (in a key, a flag, a
    path) is shown escaped, as Python would write it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return ExitCode.OK
    command, rest = argv[0], argv[1:]

    commands = {"fit": cmd_fit, "make-shards": cmd_make_shards, "index": cmd_index, "config": cmd_config}
    try:
        if command in ("diagnose", "collect", "bench-data", "encode", "evaluate", "export"):
            import importlib
            module = {"bench-data": "benchdata"}.get(command, command)
            return importlib.import_module(f".{module}", __package__).main(rest)
        if command not in commands:
            raise ConfigError(f"unknown command '{command}' (commands: fit, make-shards, index, diagnose, collect, "
                              "bench-data, encode, evaluate, export, config)")
        return commands[command](rest)
    except ConfigError as e:
        from .logs import logging_installed, print_error
        if logging_installed() and not getattr(e, "logged", False):  # a rank: its logs hold the error
            logging.getLogger("ae_train").error("%s", one_line(str(e)))
        else:
            print_error(one_line(str(e)))
        return ExitCode.BAD_INPUT


def run() -> None:
    """`ae-train` and `python -m ae_train`: main(), then an exit without the interpreter's teardown of
    torch and Lightning (~0.9 s per process, at the end of every rank and command; see exit_process)."""
    try:
        code = main()
    except BrokenPipeError:  # `ae-train config --help | head`: the reader left, nothing to say
        sys.stdout = None
        code = ExitCode.OK
    exit_process(code)
