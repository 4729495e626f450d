"""The streaming tar walk against Python's tarfile: plain, gzip, concatenated gzip, GNU long names and
pax records, and every way a stream can be cut or corrupted."""
from __future__ import annotations

import gzip
import io
import subprocess
import tarfile

import pytest

from ae_train.data.shards import count_stream
from ae_train.data.stream import iter_samples
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
