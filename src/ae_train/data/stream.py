"""The streaming tar walk: samples of a shard read front to back from any byte stream, gzip or not.

For shards that are remote, compressed, or too large to hold whole (data.buffer_mb): memory is one
read chunk, the member being read, and what the caller keeps. A local uncompressed shard is walked
in place instead (source.map_open): its pages come from the page cache as the walk reaches them,
and with `views` its members are handed out as views of the map, so no byte of it is copied
before the decoder reads it (a JPEG worker's cost beside the decode: 55 vs 86 us per sample read
in chunks, bench/jpeg_resize.py). Headers are read by tario.py, as the generic walk reads them
(checksums, GNU long names, pax records), and a damaged tar is the same ShardError text; samples
are grouped by WebDataset's key rule (`split_key`). Only the stream's own failures are worded here:
a broken gzip stream, an empty one.
"""
from __future__ import annotations

import mmap
import zlib
from typing import Iterator

from .tario import BLOCK, END_BLOCK, NAME_HEADERS, REGULAR, NameHeaders, ShardError, incomplete_header, padded, \
    read_header, split_key, truncated
from .source import map_open, open_shard

CHUNK = 1 << 20
DROP_EVERY = 4 << 20  # a mapped shard's pages walked past are dropped from the process this often
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # Linux and the BSDs; elsewhere pages stay mapped until the end


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

    def take(self, n: int) -> bytes:
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

    def header(self) -> bytes:
        return self.take(BLOCK)


class _Mapped:
    """A mapped shard (source.map_open) read front to back as `_Bytes` reads a stream: headers copied
    (512 bytes), members handed out as views of the map with `views`, else copied once. Every
    DROP_EVERY bytes the pages walked past leave the process (MADV_DONTNEED: on a file mapping they
    stay in the page cache, and a member still held is read back from there when it is used), so a
    worker's resident memory stays about DROP_EVERY plus its held members, whatever the shard size."""

    def __init__(self, mapped, views: bool):
        self.map, self.pos, self.size, self.dropped = mapped, 0, len(mapped), 0
        self.view = memoryview(mapped) if views else None

    def header(self) -> bytes:
        if self.pos - self.dropped >= DROP_EVERY and _DONTNEED is not None:
            self.dropped = self.pos - self.pos % mmap.PAGESIZE
            self.map.madvise(_DONTNEED, 0, self.dropped)
        out = self.map[self.pos:self.pos + BLOCK]
        self.pos += len(out)
        return out

    def take(self, n: int):
        end = min(self.pos + n, self.size)
        out = self.view[self.pos:end] if self.view is not None else self.map[self.pos:end]
        self.pos = end
        return out

    def skip(self, n: int) -> int:
        n = min(n, self.size - self.pos)
        self.pos += n
        return n

    def close(self) -> None:
        """Unmapped now, or when the caller lets go of the last member view it still holds."""
        if self.view is not None:
            self.view.release()
        try:
            self.map.close()
        except BufferError:  # member views still held: the map goes with the last of them
            pass


def iter_samples(stream, want: set[str] | None = None) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {ext: data}) per sample in tar order, from a binary stream or a `_Mapped` shard. Data is
    kept for the extensions in `want` (all when None) and None for the others, which are skipped
    over without a copy."""
    src = stream if isinstance(stream, _Mapped) else _Bytes(stream)
    at, names = 0, NameHeaders()
    key, parts = None, {}
    while True:
        block = src.header()
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
                data = src.take(size)
                got = len(data) + src.skip(padded(size) - size)
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
            names.add(kind, bytes(data[:size]), at)
        else:
            names.clear()
            got = src.skip(padded(size))
            if got < size:
                raise truncated(f"at byte {at}", size, data_at + got)
        at = data_at + padded(size)
    if key is not None:
        yield key, parts


def open_samples(url: str, want: set[str] | None = None, views: bool = False):
    """(stream, samples iterator) of a shard URL; close the stream when done. A local uncompressed
    shard is read in place; with `views` its members are memoryviews of it (valid until the caller
    drops them, even past close), else bytes."""
    stream = open_shard(url)
    try:
        mapped = map_open(stream)
    except BaseException:
        stream.close()
        raise
    if mapped is None:
        return stream, iter_samples(stream, want)
    stream.close()  # the map keeps the file
    src = _Mapped(mapped, views)
    return src, iter_samples(src, want)
