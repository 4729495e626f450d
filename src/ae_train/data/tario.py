"""Tar and .npy parsing for WebDataset shards, without tarfile or np.load on the sample path.

A shard is read whole (one read call, into a reused buffer, the next shard read ahead in a thread),
its 512-byte headers are walked in memory and each sample's array is a slice of that buffer. Handles
ustar, GNU long names (typeflag L) and pax headers (x, g), the forms written by webdataset's
ShardWriter, Python's tarfile and GNU tar. Samples follow the WebDataset convention: members sharing
the path up to the first dot of the file name are one sample.

This is the generic walk (`iter_members`: one header at a time, the reference); tarscan.py holds the
fast one (`sample_table`), which must give the same members and the same errors.
"""
from __future__ import annotations

import ast
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")


class ShardError(Exception):
    """A shard that cannot be read as WebDataset samples; the message says why."""


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # where the member's data starts in the file
    size: int


def _octal(field: bytes, what: str, at: int) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardError(f"bad {what} field in tar header at byte {at}") from None


def _check_header(block: bytes, at: int) -> None:
    try:
        stored = _octal(block[148:156], "checksum", at)
    except ShardError:
        stored = -1
    if stored < 0:
        raise ShardError(f"not a tar file or corrupt header at byte {at} (no checksum)")
    # The sum of every byte with the checksum field read as spaces (numpy: 20x a Python sum here).
    actual = int(np.frombuffer(block, np.uint8).sum(dtype=np.int64)) - sum(block[148:156]) + 8 * 32
    if stored != actual:
        raise ShardError(f"not a tar file or corrupt header at byte {at} (checksum mismatch)")


def _pax_fields(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def member_name_size(block: bytes, size: int, long_name: str | None, pax: dict) -> tuple[str, int]:
    """A regular member's name and size: ustar name (+ prefix), overridden by a GNU long name, then
    by pax `path`/`size` records."""
    name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if block[257:262] == b"ustar" and block[345] != 0:
        name = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
    return pax.get("path", long_name or name), int(pax.get("size", size))


def _entries(read, total: int, pos: int = 0):
    """Every header from `pos` on, as (header pos, typeflag, Member or None, next header pos)."""
    long_name, pax = None, {}
    while pos + BLOCK <= total:
        block = read(pos, BLOCK)
        if len(block) < BLOCK:
            break
        if block == _ZERO_BLOCK:
            return  # end-of-archive marker
        _check_header(block, pos)
        size = _octal(block[124:136], "size", pos)
        kind = block[156:157]
        data_at = pos + BLOCK
        if data_at + size > total:
            raise ShardError(f"truncated tar: member at byte {pos} needs {size} bytes, file ends at {total}")
        member = None
        if kind == b"L":
            long_name = read(data_at, size).rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":
            pax = _pax_fields(read(data_at, size))
        elif kind in _REGULAR:
            name, size = member_name_size(block, size, long_name, pax)
            if data_at + size > total:
                raise ShardError(f"truncated tar: member {name} needs {size} bytes, file ends at {total}")
            member = Member(name, data_at, size)
            long_name, pax = None, {}
        else:
            long_name, pax = None, {}  # directories, links, global pax headers: nothing to read
        nxt = data_at + (size + BLOCK - 1) // BLOCK * BLOCK
        yield pos, kind, member, nxt
        pos = nxt
    if pos < total and total - pos >= BLOCK:
        raise ShardError(f"truncated tar: incomplete header at byte {pos}")
    if 0 < total - pos < BLOCK and pos != 0:
        raise ShardError(f"truncated tar: {total - pos} stray bytes at byte {pos}")


def iter_members(read, total: int) -> Iterator[Member]:
    """Regular-file members. `read(offset, n)` returns bytes; `total` is the file size."""
    for _, _, member, _ in _entries(read, total):
        if member is not None:
            yield member


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: key = directory + file name up to its first dot; ext = the rest, lowercased."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def group_samples(members) -> list[tuple[str, dict[str, Member]]]:
    samples: list[tuple[str, dict[str, Member]]] = []
    for m in members:
        key, ext = split_key(m.name)
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext] = m
    return samples


def members_of_buffer(buf: bytes) -> list[Member]:
    return list(iter_members(lambda off, n: buf[off:off + n], len(buf)))


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
    """The whole file as a bytes-like buffer (slices are bytes), like `open(url, "rb").read()`, but
    into a buffer of this process that is reused once nothing views it any more: no fresh pages to
    fault in for every shard, and views of the previous shard's buffer stay valid. `times`: a
    StageTimes that gets the read's seconds and bytes (bench-data)."""
    if times is not None:
        buf = times.timed("read", read_shard, url)
        times.add("bytes", len(buf))
        return buf
    with open(url, "rb", buffering=0) as f:
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


def count_file(path: str) -> dict:
    """Header scan with seeks (no data read): samples per extension, for the shard index."""
    total = os.path.getsize(path)
    with open(path, "rb") as f:
        def read(off: int, n: int) -> bytes:
            f.seek(off)
            return f.read(n)
        samples = group_samples(iter_members(read, total))
    exts: dict[str, int] = {}
    for _, parts in samples:
        for ext in parts:
            exts[ext] = exts.get(ext, 0) + 1
    return {"bytes": total, "samples": len(samples), "exts": exts}


_NPY_MAGIC = b"\x93NUMPY"
_header_cache: dict[bytes, tuple[np.dtype, tuple, int]] = {}


def npy_layout(buf: bytes, m: Member) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, data offset in buf) of a .npy member; headers repeat, so they are parsed once."""
    at = m.offset
    if buf[at:at + 6] != _NPY_MAGIC:
        raise ShardError(f"member {m.name} is not a .npy array (bad magic)")
    major = buf[at + 6]
    if major == 1:
        hlen, start = int.from_bytes(buf[at + 8:at + 10], "little"), at + 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(buf[at + 8:at + 12], "little"), at + 12
    else:
        raise ShardError(f"member {m.name}: unsupported .npy version {major}")
    header = bytes(buf[start:start + hlen])  # hashable even when buf is a bytearray
    parsed = _header_cache.get(header)
    if parsed is None:
        try:
            d = ast.literal_eval(header.decode("latin1"))
            dtype = np.dtype(d["descr"])
            shape = tuple(d["shape"])
            if d.get("fortran_order") and len(shape) > 1:
                raise ValueError("fortran order")
            if dtype.hasobject:
                raise ValueError("object arrays")
        except Exception as e:  # any malformed header is the shard's fault, not ours
            raise ShardError(f"member {m.name}: bad .npy header ({e})") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        parsed = (dtype, shape, nbytes)
        if len(_header_cache) < 1024:
            _header_cache[header] = parsed
    dtype, shape, nbytes = parsed
    data_at = start + hlen
    if data_at + nbytes > m.offset + m.size:
        raise ShardError(f"member {m.name}: .npy data shorter than its header says")
    return dtype, shape, data_at
