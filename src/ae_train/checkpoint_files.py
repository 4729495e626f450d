"""Checkpoint files on disk: is one whole, which one to resume from, what a killed save left behind.

`resume_path` picks the checkpoint a run continues from (`resume=auto`: the newest whole one), for
the launcher before any rank starts and for ranks that no launcher started.

torch.save writes a zip archive (data.pkl plus one record per tensor storage, each with a CRC-32).
A save cut short by a kill or a full disk has no central directory at its end; a file damaged
afterwards fails a record's CRC. zipfile finds both without torch, so the launcher checks the
checkpoint to resume before any rank starts. Checkpoints are written to `<name>.tmp<pid>` and
renamed (checkpoint_io.AtomicCheckpointIO, through atomic.py): a `.tmp<pid>` file is a save that
never finished.

`read_progress` reads where a checkpoint stands (epoch, step, batches of the epoch, the data order)
from its pickle without torch: every tensor and class in it becomes an opaque stand-in, only plain
values are kept. The launcher decides with it, before any rank starts, whether a run is finished
and whether its epoch can go on with this config.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import logformat as lf
from .atomic import TMP_MARK
from .errors import ConfigError
from .rundir import LAST_CKPT, RunDir

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)
_LEFTOVER = re.compile(rf".+\.ckpt{re.escape(TMP_MARK)}\d+$")  # atomic.tmp_name of a checkpoint


def verify(path: str | Path) -> str | None:
    """None when `path` is a whole checkpoint, else why not (a phrase that follows the file name)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "is empty (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(2)
        if head != b"PK":  # torch.save's legacy (pre-1.6) format is a bare pickle: taken as it is
            return None if head[:1] == b"\x80" else f"is not a PyTorch checkpoint ({size} bytes, no zip archive)"
        with zipfile.ZipFile(path) as z:
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist()):
                return "is a zip archive but no PyTorch checkpoint (no data.pkl)"
            bad = z.testzip()  # reads every record: a CRC mismatch names the damaged one
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, NotImplementedError) as e:
        return f"is truncated or corrupt ({size} bytes: {e})"
    if bad:
        return f"is corrupt (record {bad} fails its CRC check)"
    return None


def newest_good(ckpt_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest whole checkpoint in `ckpt_dir` (last.ckpt first among equals), and the broken ones
    newer than it, each with the reason."""
    try:
        found = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file()]
    except OSError:
        return None, []
    found.sort(key=lambda p: (p.stat().st_mtime, p.name == LAST_CKPT), reverse=True)
    skipped = []
    for p in found:
        why = verify(p)
        if why is None:
            return p, skipped
        skipped.append((p, why))
    return None, skipped


def resume_path(cfg: Config, verify_given: bool = True, warn: bool = True) -> str | None:
    """The checkpoint this run continues from, or None for a fresh run.

    `auto` takes the newest whole checkpoint in output_dir/checkpoints (last.ckpt normally) and says
    so when it had to pass over a broken one; a path given with `--resume` must be whole.
    `verify_given` False trusts a given path (the launcher verified it before starting the ranks).
    """
    ckpt_dir = RunDir.of(cfg).checkpoints
    if cfg.resume == "auto":
        good, broken = newest_good(ckpt_dir)
        if broken and good is None:
            path, why = broken[0]
            raise ConfigError(f"resume=auto: no readable checkpoint in {ckpt_dir}: {path.name} {why}"
                              + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
                              + "; move them away to start afresh, or pass --resume=<checkpoint>")
        if broken and warn:
            names = ", ".join(f"{p.name} {why}" for p, why in broken)
            log.warning(lf.RESUME_FALLBACK.template, names, good)
        return str(good) if good else None
    if cfg.resume:
        if not Path(cfg.resume).is_file():
            raise ConfigError(f"resume: checkpoint not found: {cfg.resume}")
        why = verify(cfg.resume) if verify_given else None
        if why:
            raise ConfigError(f"resume: checkpoint {cfg.resume} {why}")
        return cfg.resume
    if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
        raise ConfigError(f"output_dir {cfg.output_dir} already holds checkpoints of an earlier run; "
                          "pass --resume=auto to continue it, or choose another --output_dir")
    return None


def remove_leftovers(ckpt_dir: Path) -> list[Path]:
    """Delete `<name>.ckpt.tmp<pid>` files of saves that never finished (the run lock is held, so no
    live save of this output_dir is writing them); return what was removed."""
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if _LEFTOVER.match(p.name):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError as e:
                    log.warning(lf.LEFTOVER_KEPT.template, p, e.strerror or e)
    return removed


class _Opaque(dict):
    """Stands in for any class or function of the pickle that is not a plain value (tensors, Lightning's
    AttributeDict, ...): takes whatever it is built with, holds nothing that is read."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()


class _PlainUnpickler(pickle.Unpickler):
    _PLAIN = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
              ("builtins", "complex"), ("builtins", "slice"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._PLAIN:
            return super().find_class(module, name)
        return _Opaque

    def persistent_load(self, pid):  # a tensor's storage: not read
        return None


@dataclass(frozen=True)
class Progress:
    """Where a checkpoint stands."""
    epoch: int  # the epoch under way (Lightning's current_epoch when saved)
    global_step: int
    epochs_done: int  # epochs whose training part finished
    batches_done: int  # batches of the epoch under way trained, per rank
    order: dict | None  # the DataModule's state: the epoch's data order (data/resume.py), if any
    hparams: dict | None = None  # the model's hyperparameters (its shape: arch, widths, input)


def read_progress(path: str | Path) -> Progress | None:
    """The checkpoint's progress, read without torch; None for a file that is no such checkpoint."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            ckpt = _PlainUnpickler(io.BytesIO(z.read(name))).load()
        loop = ckpt["loops"]["fit_loop"]
        epochs = loop["epoch_progress"]["current"]
        batches = loop["epoch_loop.batch_progress"]["current"]
        order, hparams = ckpt.get("ShardDataModule"), ckpt.get("hyper_parameters")
        return Progress(int(ckpt["epoch"]), int(ckpt["global_step"]), int(epochs["processed"]),
                        int(batches["completed"]), order if isinstance(order, dict) and order else None,
                        dict(hparams) if isinstance(hparams, dict) else None)
    except (OSError, zipfile.BadZipFile, StopIteration, KeyError, TypeError, ValueError, pickle.UnpicklingError,
            EOFError, AttributeError):
        return None


def nothing_to_train(progress: Progress, max_epochs: int, max_steps: int) -> tuple | None:
    """(template, args) of the line saying that a checkpoint already reached the run's end, or None."""
    if progress.epochs_done >= max_epochs:
        return lf.NOTHING_TO_TRAIN.template, (progress.epochs_done - 1, max_epochs, max_epochs + progress.epochs_done)
    if 0 < max_steps <= progress.global_step:
        return lf.NOTHING_TO_TRAIN_STEPS.template, (progress.global_step, max_steps, 2 * max_steps)
    return None
