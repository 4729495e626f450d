"""Tar and .npy parsing for WebDataset shards, without tarfile or np.load on the sample path.

A shard is read whole (one read call), its 512-byte headers are walked in memory and each sample's
array is a slice of that buffer. Handles ustar, GNU long names (typeflag L) and pax headers (x, g),
the forms written by webdataset's ShardWriter, Python's tarfile and GNU tar. Samples follow the
WebDataset convention: members sharing the path up to the first dot of the file name are one sample.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterator

import numpy as np

BLOCK = 512


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
    actual = sum(block[:148]) + 8 * 32 + sum(block[156:])
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


def iter_members(read, total: int) -> Iterator[Member]:
    """Regular-file members. `read(offset, n)` returns bytes; `total` is the file size."""
    pos, long_name, pax = 0, None, {}
    while pos + BLOCK <= total:
        block = read(pos, BLOCK)
        if len(block) < BLOCK:
            break
        if block == b"\0" * BLOCK:
            return  # end-of-archive marker
        _check_header(block, pos)
        size = _octal(block[124:136], "size", pos)
        kind = block[156:157]
        data_at = pos + BLOCK
        if data_at + size > total:
            raise ShardError(f"truncated tar: member at byte {pos} needs {size} bytes, file ends at {total}")
        if kind == b"L":
            long_name = read(data_at, size).rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":
            pax = _pax_fields(read(data_at, size))
        elif kind in (b"0", b"\0", b"7"):
            name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if block[257:262] == b"ustar" and block[345] != 0:
                name = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
            name = pax.get("path", long_name or name)
            size = int(pax.get("size", size))
            if data_at + size > total:
                raise ShardError(f"truncated tar: member {name} needs {size} bytes, file ends at {total}")
            yield Member(name, data_at, size)
            long_name, pax = None, {}
        else:
            long_name, pax = None, {}  # directories, links, global pax headers: nothing to read
        pos = data_at + (size + BLOCK - 1) // BLOCK * BLOCK
    if pos < total and total - pos >= BLOCK:
        raise ShardError(f"truncated tar: incomplete header at byte {pos}")
    if 0 < total - pos < BLOCK and pos != 0:
        raise ShardError(f"truncated tar: {total - pos} stray bytes at byte {pos}")


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


def count_file(path: str) -> dict:
    """Header scan with seeks (no data read): samples per extension, for the shard index."""
    import os

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
    header = buf[start:start + hlen]
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
