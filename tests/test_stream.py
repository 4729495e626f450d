"""The streaming tar walk against Python's tarfile: plain, gzip, concatenated gzip, GNU long names and
pax records, and every way a stream can be cut or corrupted; local shards read in place (mapped) give
the same samples and the same errors."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile

import numpy as np
import pytest

from ae_train.data.shards import count_stream
from ae_train.data.stream import iter_samples, open_samples
from ae_train.data.tario import ShardError, group_samples, members_of_buffer

LONG = "d" * 120


def _tar(members: list[tuple[str, bytes]], fmt=tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


MEMBERS = [(f"{LONG}/k{i:03d}.{ext}", bytes([i % 251]) * (1 + i * 37 % 1500))
           for i in range(40) for ext in ("png", "cls")] + [("plain.x.npy", b"\x93NUMPY" + b"z" * 90)]


def _expected(raw: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """Samples as the in-memory walk (tario, the reference) groups them, with their bytes."""
    return [(k, {e: raw[m.offset:m.offset + m.size] for e, m in parts.items()})
            for k, parts in group_samples(members_of_buffer(raw))]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_stream_same_samples_as_the_buffer_walk(fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [(n[-20:], d) for n, d in MEMBERS]
    raw = _tar(members, fmt)
    assert list(iter_samples(io.BytesIO(raw))) == _expected(raw)
    gz = gzip.compress(raw)
    assert list(iter_samples(io.BytesIO(gz))) == _expected(raw)


def test_stream_keeps_only_wanted_members():
    raw = _tar(MEMBERS)
    got = list(iter_samples(io.BytesIO(raw), {"cls"}))
    assert all(parts["png"] is None and parts["cls"] is not None for _, parts in got[:-1])
    assert got[-1][1] == {"x.npy": None}


def test_stream_concatenated_gzip_members_and_gnu_tar_gz(tmp_path):
    raw = _tar(MEMBERS[:10])
    # gzip's own multi-member form: two compressed halves of one stream
    half = len(raw) // 2
    assert list(iter_samples(io.BytesIO(gzip.compress(raw[:half]) + gzip.compress(raw[half:])))) == _expected(raw)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"s{i}.txt").write_text(f"label {i}")
    subprocess.run(["tar", "czf", str(tmp_path / "g.tgz"), "-C", str(src), "."], check=True)
    entry = count_stream(str(tmp_path / "g.tgz"))
    assert entry == {"samples": 5, "exts": {"txt": 5}}


def test_stream_damage_is_a_shard_error_that_says_what():
    raw = _tar(MEMBERS)
    gz = gzip.compress(raw)
    cases = {
        "truncated gzip stream": gz[: len(gz) // 2],
        "gzip error": gz[:100] + bytes(200) + gz[300:],
        "truncated tar: member a.bin needs 5000 bytes": _tar([("a.bin", b"x" * 5000)])[:512 + 100],
        "truncated tar: incomplete header": raw[:512 * 2 + 100],
        "not a tar file or corrupt header": b"this is no tar file" * 100,
        "empty stream": b"",
    }
    for expected, data in cases.items():
        with pytest.raises(ShardError, match=expected):
            list(iter_samples(io.BytesIO(data)))


def test_stream_zlib_error_text_is_kept():
    with pytest.raises(ShardError) as e:
        list(iter_samples(io.BytesIO(b"\x1f\x8b" + b"\x08\x00" + bytes(30))))
    assert "gzip error" in str(e.value)


def _samples_of(url: str, views: bool = False, want=None) -> list:
    src, samples = open_samples(url, want, views)
    try:
        return [(k, {e: None if d is None else bytes(d) for e, d in parts.items()}) for k, parts in samples]
    finally:
        src.close()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_stream_local_shard_read_in_place_gives_the_same_samples(tmp_path, fmt):
    raw = _tar(MEMBERS, fmt)
    (tmp_path / "s.tar").write_bytes(raw)
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "gz-named-tar.tar").write_bytes(gzip.compress(raw))  # gzip found by its magic, any name
    for name in ("s.tar", "s.tar.gz", "gz-named-tar.tar"):
        url = str(tmp_path / name)
        assert _samples_of(url) == _expected(raw), name
        assert _samples_of(f"file://{url}", views=True) == _expected(raw), name
    assert _samples_of(str(tmp_path / "s.tar"), want={"cls"})[0][1]["png"] is None


def test_stream_local_members_are_views_of_the_map_that_outlive_close(tmp_path):
    raw = _tar(MEMBERS[:6])
    (tmp_path / "s.tar").write_bytes(raw)
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress(raw))
    src, samples = open_samples(str(tmp_path / "s.tar"), None, views=True)
    held = [parts for _, parts in samples]
    src.close()  # the members still held keep the map
    assert all(isinstance(d, memoryview) for parts in held for d in parts.values())
    assert [{e: bytes(d) for e, d in parts.items()} for parts in held] == [p for _, p in _expected(raw)]
    src, samples = open_samples(str(tmp_path / "s.tar.gz"), None, views=True)  # a stream: bytes, as ever
    assert all(isinstance(d, bytes) for _, parts in samples for d in parts.values())
    src.close()


def test_stream_local_damage_is_the_same_shard_error(tmp_path):
    raw = _tar(MEMBERS)
    cases = {
        "truncated tar: member a.bin needs 5000 bytes": _tar([("a.bin", b"x" * 5000)])[:512 + 100],
        "truncated tar: incomplete header": raw[:512 * 2 + 100],
        "not a tar file or corrupt header": b"this is no tar file" * 100,
        "empty stream": b"",
    }
    for i, (expected, data) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.tar"
        path.write_bytes(data)
        with pytest.raises(ShardError, match=expected):
            _samples_of(str(path), views=True)
    with pytest.raises(FileNotFoundError):
        open_samples(str(tmp_path / "missing.tar"))


def _rss_file_kb() -> int:
    status = open("/proc/self/status").read()
    return int(status.split("RssFile:")[1].split()[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident size from /proc")
def test_stream_local_shard_pages_walked_past_leave_the_process(tmp_path, monkeypatch):
    from ae_train.data import stream

    monkeypatch.setattr(stream, "DROP_EVERY", 1 << 20)
    blobs = [np.random.default_rng(i).integers(0, 255, 4 << 20, np.uint8).tobytes() for i in range(12)]
    (tmp_path / "big.tar").write_bytes(_tar([(f"k{i:02d}.bin", b) for i, b in enumerate(blobs)]))  # 48 MB
    src, samples = open_samples(str(tmp_path / "big.tar"), None, views=True)
    before, held, peak = _rss_file_kb(), [], 0
    for _, parts in samples:
        view = parts["bin"]
        assert hashlib.sha1(view).digest() == hashlib.sha1(blobs[len(held)]).digest()  # every page read
        held.append(view)
        peak = max(peak, _rss_file_kb() - before)
    assert peak < 16 << 10, f"{peak} kB resident for a 48 MB shard"  # a member (4 MB) and the last MB walked
    assert [bytes(v) for v in held] == blobs  # held views read back after their pages were dropped
    src.close()
