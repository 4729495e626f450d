"""Checkpoint files on disk: is one whole, which one to resume from, what a killed save left behind.

torch.save writes a zip archive (data.pkl plus one record per tensor storage, each with a CRC-32).
A save cut short by a kill or a full disk has no central directory at its end; a file damaged
afterwards fails a record's CRC. zipfile finds both without torch, so the launcher checks the
checkpoint to resume before any rank starts. Checkpoints are written to `<name>.tmp<pid>` and
renamed (checkpoint_io.AtomicCheckpointIO): a `.tmp<pid>` file is a save that never finished.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import zipfile
from pathlib import Path

from .rundir import LAST_CKPT

log = logging.getLogger(__name__)
TMP_MARK = ".tmp"  # <name>.tmp<pid>: a checkpoint being written
_LEFTOVER = re.compile(r".+\.ckpt\.tmp\d+$")


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


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
                    log.warning("Could not remove %s, left by an unfinished checkpoint save: %s", p, e.strerror or e)
    return removed
