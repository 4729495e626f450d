"""The streaming tar walk: samples of a shard read front to back from any byte stream, gzip or not.

For shards that are remote, compressed, or too large to hold whole (data.buffer_mb): memory is one
read chunk, the member being read, and what the caller keeps. Headers are read by tario.py, as the
generic walk reads them (checksums, GNU long names, pax records), and a damaged tar is the same
ShardError text; samples are grouped by WebDataset's key rule (`split_key`). Only the stream's own
failures are worded here: a broken gzip stream, an empty one.
"""
from __future__ import annotations

import zlib
from typing import Iterator

from .tario import BLOCK, END_BLOCK, NAME_HEADERS, REGULAR, NameHeaders, ShardError, incomplete_header, padded, \
    read_header, split_key, truncated
from .source import open_shard

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
    at, names = 0, NameHeaders()
    key, parts = None, {}
    while True:
        block = src.take(BLOCK)
        if len(block) < BLOCK:
            if block:
                raise incomplete_header(at)
            if at == 0:
                raise ShardError("empty stream: not a tar file (0 bytes)")
            break  # a tar without its end-of-archive marker: what a cut stream looks like, accepted as tar does
        if block == END_BLOCK:
            break
        kind, size = read_header(block, at)
        data_at = at + BLOCK
        if kind in REGULAR:
            name, size = names.member(block, size)
            k, ext = split_key(name)
            if want is None or ext in want:
                data = src.take(padded(size))
                got = len(data)
                data = data[:size]
            else:
                got, data = src.skip(padded(size)), None
            if got < size:
                raise truncated(name, size, data_at + got)
            if k != key:
                if key is not None:
                    yield key, parts
                key, parts = k, {}
            parts[ext] = data
        elif kind in NAME_HEADERS:
            data = src.take(padded(size))
            if len(data) < size:
                raise truncated(f"at byte {at}", size, data_at + len(data))
            names.add(kind, data[:size], at)
        else:
            names.clear()
            got = src.skip(padded(size))
            if got < size:
                raise truncated(f"at byte {at}", size, data_at + got)
        at = data_at + padded(size)
    if key is not None:
        yield key, parts


def open_samples(url: str, want: set[str] | None = None):
    """(stream, samples iterator) of a shard URL; close the stream when done."""
    stream = open_shard(url)
    return stream, iter_samples(stream, want)
