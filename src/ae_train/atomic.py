"""Atomic file writes: a file ae_train replaces is always either what it was or the new content, whole.

Every such write goes through `atomic_write`: the bytes go to `<name>.tmp<pid>` beside the target,
which is renamed over it (os.replace) once they are all written, so a reader (another launcher, a
user's `ls`, a resumed run) never sees half a file, and a kill or a full disk mid-write leaves the old
one. On any error the temporary file is removed and the error raised. With `durable` the file and
then its directory are fsynced, so the new file also survives a power loss (checkpoints). A
`<name>.tmp<pid>` left behind is a write that never finished (checkpoint_files.remove_leftovers).
Standard library only.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp"  # <name>.tmp<pid>: a file being written


def tmp_name(path: Path) -> Path:
    """Where `path`'s new content is written first (this process's own name: writers never collide)."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | Path, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` when the block ends
    without an error (the directory must exist)."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        with contextlib.suppress(OSError):  # the rename itself survives a power loss
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
