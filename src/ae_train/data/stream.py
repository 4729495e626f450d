"""The streaming tar walk: samples of a shard read front to back from any byte stream, gzip or not.

For shards that are remote, compressed, or too large to hold whole (data.buffer_mb): memory is one
read chunk, the member being read, and what the caller keeps. The headers follow the same rules as
the in-memory walk in tario.py (checksums, GNU long names, pax records) and raise the same
ShardError texts; samples are grouped by WebDataset's key rule (`split_key`).
"""
from __future__ import annotations

import zlib
from typing import Iterator

from .tario import _ZERO_BLOCK, BLOCK, ShardError, _check_header, _octal, _pax_fields, _REGULAR, member_name_size, \
    split_key
from .urls import open_url

CHUNK = 1 << 20


class _Bytes:
    """Decompressed bytes of a stream, consumed front to back. gzip is detected by its magic bytes
    (any file name), concatenated gzip members are read on, and every zlib/short-stream failure
    becomes a ShardError that says so."""

    def __init__(self, raw):
        self.raw, self.buf, self.pos, self.eof = raw, bytearray(), 0, False
        self.read_bytes = 0  # bytes taken from the stream (compressed size for gzip)
        self.gz: zlib._Decompress | None = None
        first = self._raw_chunk()
        if first[:2] == b"\x1f\x8b":
            self.gz = zlib.decompressobj(wbits=31)
            self._feed(first)
        else:
            self.buf += first
            self.eof = not first

    def _raw_chunk(self) -> bytes:
        data = self.raw.read(CHUNK)
        self.read_bytes += len(data)
        return data

    def _feed(self, data: bytes) -> None:
        try:
            while data:
                self.buf += self.gz.decompress(data)
                data = self.gz.unused_data
                if data:  # a second gzip member follows (what `cat a.gz b.gz` makes)
                    self.gz = zlib.decompressobj(wbits=31)
        except zlib.error as e:
            raise ShardError(f"gzip error: {e}") from None

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self._raw_chunk()
        if not data:
            self.eof = True
            if self.gz is not None:
                try:
                    self.buf += self.gz.flush()
                except zlib.error as e:
                    raise ShardError(f"gzip error: {e}") from None
                if not self.gz.eof:
                    raise ShardError("truncated gzip stream (compressed data ends before its end marker)")
            return False
        if self.pos > CHUNK:  # drop what was consumed, so the buffer stays about one chunk
            del self.buf[:self.pos]
            self.pos = 0
        if self.gz is not None:
            self._feed(data)
        else:
            self.buf += data
        return True

    def take(self, n: int) -> bytes | None:
        """The next n bytes, or what is left (shorter) at the end of the stream."""
        while len(self.buf) - self.pos < n and self._more():
            pass
        with memoryview(self.buf) as view:  # one copy (a bytearray slice would be two)
            out = bytes(view[self.pos:self.pos + n])
        self.pos += len(out)
        return out

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            avail = len(self.buf) - self.pos
            if avail == 0 and not self._more():
                break
            step = min(n - done, len(self.buf) - self.pos)
            self.pos += step
            done += step
        return done


def iter_samples(stream, want: set[str] | None = None) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {ext: data}) per sample in tar order. Data is kept for the extensions in `want` (all when
    None) and None for the others, which are skipped over without a copy."""
    src = _Bytes(stream)
    at, long_name, pax = 0, None, {}
    key, parts = None, {}
    while True:
        block = src.take(BLOCK)
        if len(block) < BLOCK:
            if block:
                raise ShardError(f"truncated tar: incomplete header at byte {at}")
            if at == 0 and key is None:
                raise ShardError("empty stream: not a tar file (0 bytes)")
            break  # a tar without its end-of-archive marker: what a cut stream looks like, accepted as tar does
        if block == _ZERO_BLOCK:
            break
        _check_header(block, at)
        size = _octal(block[124:136], "size", at)
        kind = block[156:157]
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind == b"L" or kind == b"x":
            data = src.take(padded)
            if len(data) < padded:
                raise ShardError(f"truncated tar: member at byte {at} needs {size} bytes, the stream ends first")
            if kind == b"L":
                long_name = data[:size].rstrip(b"\0").decode("utf-8", "replace")
            else:
                pax = _pax_fields(data[:size])
        elif kind in _REGULAR:
            name, size = member_name_size(block, size, long_name, pax)
            padded = (size + BLOCK - 1) // BLOCK * BLOCK
            long_name, pax = None, {}
            k, ext = split_key(name)
            if want is None or ext in want:
                data = src.take(padded)
                got = len(data)
                data = data[:size]
            else:
                got, data = src.skip(padded), None
            if got < padded and got < size:
                raise ShardError(f"truncated tar: member {name} needs {size} bytes, the stream ends first")
            if k != key:
                if key is not None:
                    yield key, parts
                key, parts = k, {}
            parts[ext] = data
        else:
            long_name, pax = None, {}
            if src.skip(padded) < size:
                raise ShardError(f"truncated tar: member at byte {at} needs {size} bytes, the stream ends first")
        at += BLOCK + padded
    if key is not None:
        yield key, parts


def open_samples(url: str, want: set[str] | None = None):
    """(stream, samples iterator) of a shard URL; close the stream when done."""
    stream = open_url(url)
    return stream, iter_samples(stream, want)


def count_stream(url: str) -> dict:
    """The shard index entry of a shard read as a stream: samples per extension and bytes read."""
    stream = open_url(url)
    try:
        exts: dict[str, int] = {}
        samples = 0
        for _, parts in iter_samples(stream, want=set()):
            samples += 1
            for ext in parts:
                exts[ext] = exts.get(ext, 0) + 1
    finally:
        stream.close()
    return {"samples": samples, "exts": exts}
