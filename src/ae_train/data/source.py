"""A shard's bytes: the one place a shard (or the index beside it) is opened, for counting, the fast
path and streaming alike.

`open_shard(url)` is a binary stream of the shard's bytes, still compressed if it is: a local path
or `file:` URL is the file itself (seekable: counting a local tar reads its headers only), any other
URL goes through remote.py, whose streams retry transient failures and resume where they broke.
`map_open(stream)` maps such a local uncompressed shard read-only: the streamed walk reads it in place,
its members views of the page cache, with no read call, buffer or copy of its own.

The fast path holds a local shard whole (`read_shard`: one read call, the next shard read ahead in a
thread by `read_shard_ahead`), so that each sample's array is a slice of it.
"""
from __future__ import annotations

import mmap
import os
import stat
import threading

from .remote import open_remote
from .urls import local_path


def open_shard(url: str):
    """A binary stream of the shard's bytes (still compressed if it is), by scheme; remote ones retry
    transient failures and resume where they broke (remote.py)."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    return open_remote(url)


def map_open(stream) -> mmap.mmap | None:
    """An open shard (open_shard's stream, at its start) mapped read-only when it is a local regular
    file without gzip magic; None otherwise (remote, gzip, empty, a FIFO or device), the stream then
    still at its start. The file must not shrink while mapped: reading a page cut off by truncation
    is SIGBUS, as with any mapped file (shards are replaced whole, never rewritten in place, by every
    writer here and by webdataset's)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError):  # remote streams have no file (io.UnsupportedOperation)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    magic = stream.read(2)
    stream.seek(0)
    if magic == b"\x1f\x8b":
        return None
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty, or a file system without mmap
        return None
    if hasattr(mapped, "madvise"):  # front to back: the kernel reads ahead further
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    return mapped


def read_small(url: str, limit: int = 64 << 20) -> bytes:
    """A whole small file (an index) through the same opener; OSError when it is not there."""
    with open_shard(url) as f:
        data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(f"{url}: larger than {limit >> 20} MB")
        rest = f.read()
        return data + rest if rest else data


# ---- whole shards, the next one read ahead ------------------------------------------------------------


def read_shard(url: str, times=None) -> bytes:
    """The whole shard, `open_shard(url).read()`. (A pool of reused huge-page buffers was measured
    against this, bench/hand_written.py: 1.25x one process, 1.05x with workers end to end, below the
    1.3x that would keep it; removed.) `times`: a StageTimes that gets the read's seconds and bytes."""
    if times is not None:
        buf = times.timed("read", read_shard, url)
        times.add("bytes", len(buf))
        return buf
    with open_shard(url) as f:
        return f.read()


class _ReadAhead:
    """read_shard(url) in a background thread: the read releases the GIL, so on a second core the
    next shard arrives while the caller decodes and batches this one."""

    def __init__(self, url: str, times=None):
        self.url, self.pid, self.buf, self.error, self.times = url, os.getpid(), None, None, times
        self.thread = threading.Thread(target=self._run, name="ae-shard-read-ahead", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.buf = read_shard(self.url, self.times)
        except BaseException as e:  # handed to the caller that asks for this shard
            self.error = e


_AHEAD: list = [None]  # the read-ahead in flight


def read_shard_ahead(url: str, next_url: str | None = None, times=None):
    """read_shard(url), taken from the read-ahead started by the previous call when it was for `url`;
    then, with `next_url`, starts reading that one. Errors are the same as read_shard's.
    `times` (StageTimes): reads as read_shard counts them, and this call's own wait as read_wait."""
    if times is not None:
        return times.timed("read_wait", _read_shard_ahead, url, next_url, times)
    return _read_shard_ahead(url, next_url, None)


def _read_shard_ahead(url: str, next_url: str | None, times):
    pending, _AHEAD[0] = _AHEAD[0], None
    buf = None
    if pending is not None and pending.url == url and pending.pid == os.getpid():
        pending.thread.join()  # blocks where read_shard would have (a stalled file system, a FIFO)
        if pending.error is not None:
            error, pending.error = pending.error, None
            raise error
        buf = pending.buf
    if buf is None:
        buf = read_shard(url, times)
    if next_url is not None:
        _AHEAD[0] = _ReadAhead(next_url, times)
    return buf


def _after_fork_in_child() -> None:  # a DataLoader worker: none of its parent's reads
    _AHEAD[0] = None


os.register_at_fork(after_in_child=_after_fork_in_child)
