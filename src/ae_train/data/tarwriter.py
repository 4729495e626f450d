"""Writing tar members: the one tar writer, for shards (make.py), latent shards (encode.py) and the help
bundle (collect.py).

Members are appended front to back to a tar stream over the caller's file (gzip over it with `gz`),
pax format (plain ustar headers for short ASCII names, as WebDataset's own writer makes them), mode
0644. Nothing seeks back, so the file may be a pipe or a gzip stream. What to name the members, and
where the file goes (a temporary name renamed at the end, or never over an existing file), is the
caller's.
"""
from __future__ import annotations

import gzip
import io
import tarfile
import time

GZIP_LEVEL = 6  # gzip's own default: most of level 9's size at a fraction of its time


class TarWriter:
    """Members written to `fileobj`, which the caller opens and closes. `mtime`: every member's time
    (0 for shards that are the same bytes however often they are made; None: the time of writing)."""

    def __init__(self, fileobj, gz: bool = False, mtime: int | None = None):
        self._gz = gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) if gz else None
        self._tar = tarfile.open(fileobj=self._gz or fileobj, mode="w|", format=tarfile.PAX_FORMAT)
        self.mtime = mtime

    def add(self, name: str, data: bytes) -> None:
        """A member holding `data`."""
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        info.mtime = int(time.time()) if self.mtime is None else self.mtime
        self._tar.addfile(info, io.BytesIO(data))

    def add_array(self, name: str, array) -> None:
        """A `.npy` member (as np.save writes it)."""
        import numpy as np  # here: collect.py writes no arrays and starts without numpy

        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.add(name, buf.getvalue())

    def add_file(self, path, name: str) -> None:
        """A file as it is when this starts (its mode and time kept): a log still written to is cut at its
        size then, a log truncated meanwhile is filled up with NULs (the header already holds the size)."""
        info = self._tar.gettarinfo(str(path), name)
        with open(path, "rb") as f:
            self._tar.addfile(info, _Sized(f, info.size))

    def close(self) -> None:
        """The end-of-archive blocks, then the gzip trailer; the caller's file stays open."""
        self._tar.close()
        if self._gz is not None:
            self._gz.close()

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()


class _Sized(io.RawIOBase):
    """A file read as exactly `size` bytes: missing bytes read as NULs, bytes appended after the stat
    are left out."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        b = self.f.read(n)
        b += b"\0" * (n - len(b))
        self.left -= n
        return b
