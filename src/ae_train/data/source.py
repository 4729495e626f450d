"""A shard's bytes: the one place a shard (or the index beside it) is opened, for counting, the fast
path and streaming alike.

`open_shard(url)` is a binary stream of the shard's bytes, still compressed if it is: a local path
or `file:` URL is the file itself (seekable: counting a local tar reads its headers only), any other
URL goes through remote.py, whose streams retry transient failures and resume where they broke.

The fast path holds a local shard whole (`read_shard`: one read call into a reused buffer, the next
shard read ahead in a thread by `read_shard_ahead`), so that each sample's array is a slice of it.
"""
from __future__ import annotations

import mmap
import os
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


def read_small(url: str, limit: int = 64 << 20) -> bytes:
    """A whole small file (an index) through the same opener; OSError when it is not there."""
    with open_shard(url) as f:
        data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(f"{url}: larger than {limit >> 20} MB")
        rest = f.read()
        return data + rest if rest else data


# ---- whole shards in reused buffers ----------------------------------------------------------------

_POOL: list = []  # read buffers (anonymous mmaps) of this process, reused once no array views them
_POOL_LOCK = threading.Lock()


def _free_buffer(size: int):
    """A pool buffer resized to `size`, or a new one, with a view of it that marks it in use. An mmap
    refuses to resize while an array views it (BufferError): that buffer is still in use and is
    skipped. Anonymous private mmaps get huge pages, which makes the copy out of the page cache as
    fast as a fresh `read()`."""
    with _POOL_LOCK:  # the read-ahead thread takes buffers too
        for b in _POOL:
            try:
                b.resize(size)
            except BufferError:
                continue
            return b, memoryview(b)
        # MAP_PRIVATE: a forked DataLoader worker gets its own copy (the default anonymous map is
        # shared memory, which forked workers would write into together, and cannot grow by resize).
        b = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(b, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
            b.madvise(mmap.MADV_HUGEPAGE)
        if len(_POOL) < 4:
            _POOL.append(b)
        return b, memoryview(b)


def read_shard(url: str, times=None):
    """The whole shard as a bytes-like buffer (slices are bytes), like `open_shard(url).read()`, but a
    local file goes into a buffer of this process that is reused once nothing views it any more: no
    fresh pages to fault in for every shard, and views of the previous shard's buffer stay valid.
    `times`: a StageTimes that gets the read's seconds and bytes (bench-data)."""
    if times is not None:
        buf = times.timed("read", read_shard, url)
        times.add("bytes", len(buf))
        return buf
    with open_shard(url) as f:
        if not hasattr(f, "fileno"):
            return f.read()
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return f.read()
        buf, view = _free_buffer(size)
        n = 0
        try:
            while n < size:
                got = f.readinto(view[n:])
                if not got:
                    break
                n += got
        finally:
            view.release()
        rest = f.read()
        if n < size or rest:  # the file changed size while we read it
            return bytes(buf[:n]) + rest
    return buf


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
_HOLD: list = [None]  # a view of the buffer last returned: not free for the read-ahead before the next call


def read_shard_ahead(url: str, next_url: str | None = None, times=None):
    """read_shard(url), taken from the read-ahead started by the previous call when it was for `url`;
    then, with `next_url`, starts reading that one. Errors are the same as read_shard's. The buffer
    returned stays reserved until the next call (the caller's own views keep it after that).
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
    held, _HOLD[0] = _HOLD[0], memoryview(buf)
    if held is not None:
        held.release()
    if next_url is not None:
        _AHEAD[0] = _ReadAhead(next_url, times)
    return buf


def _after_fork_in_child() -> None:  # a DataLoader worker: none of its parent's reads, a free lock
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    _AHEAD[0] = _HOLD[0] = None


os.register_at_fork(after_in_child=_after_fork_in_child)
