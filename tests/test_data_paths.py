"""The fast sample path against the plain WebDataset pipeline, and its vectorized tar walk against the
generic one: shards from webdataset's ShardWriter, Python's tarfile and GNU tar (long names, pax)."""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from ae_train.data import source, tario, tarscan
from ae_train.data.npyrows import gather_npy
from ae_train.data.reader import ShardBatches
from ae_train.data.shards import count_shard
from ae_train.data.source import read_shard, read_shard_ahead
from ae_train.data.tario import ShardError, group_samples, members_of_buffer
from ae_train.data.tarscan import sample_table

LONG_DIR = "d" * 120  # member names > 100 chars: GNU long-name (L) members, pax path records


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _ours(urls: list[str], dim: int, batch: int) -> np.ndarray:
    """The training path: ShardBatches in one process, shards and samples in order."""
    counts = [count_shard(u)["exts"].get("x.npy", 0) for u in urls]
    ds = ShardBatches(urls, counts, "train_shards", "x.npy", dim, batch, 0, 0, 1, 0, False)
    batches = list(DataLoader(ds, batch_size=None, num_workers=0))
    assert all(isinstance(b, torch.Tensor) and b.dtype == torch.float32 and b.shape == (batch, dim) for b in batches)
    return torch.cat(batches).numpy()


def _plain(urls: list[str], batch: int) -> np.ndarray:
    """The plain WebDataset pipeline: decode, then DataLoader collate."""
    ds = wds.WebDataset(urls, shardshuffle=False).decode().to_tuple("x.npy")
    return torch.cat([b[0] for b in DataLoader(ds, batch_size=batch)]).numpy().astype(np.float32)


def _gnu_tar(tmp: Path, fmt: str, rows: np.ndarray) -> str:
    src = tmp / f"src-{fmt}"
    (src / LONG_DIR).mkdir(parents=True)
    for i, row in enumerate(rows):
        (src / LONG_DIR / f"k{i:04d}.x.npy").write_bytes(_npy(row))
        (src / LONG_DIR / f"k{i:04d}.txt").write_text("label" * (1 + i % 3))
    out = tmp / f"{fmt}.tar"
    subprocess.run(["tar", f"--format={fmt}", "--sort=name", "-cf", str(out), "-C", str(src), "."], check=True)
    return str(out)


def _runs(buf: bytes) -> list[int]:
    """Samples in each vectorized run of the fast walk (0 for a stretch read by the generic walk)."""
    return [c.n if isinstance(c, tarscan._Rows) else 0 for c in tarscan._scan(buf)]


def _same_as_generic(buf: bytes, ext: str = "x.npy"):
    """sample_table(buf) is the generic walk's result member for member, or raises its error."""
    try:
        expected = [(k, p[ext]) for k, p in group_samples(members_of_buffer(buf)) if ext in p]
    except ShardError as e:
        with pytest.raises(ShardError) as got:
            sample_table(buf, ext)
        assert str(got.value) == str(e)
        return None
    table = sample_table(buf, ext)
    assert len(table) == len(expected)
    assert list(table.offsets) == [m.offset for _, m in expected]
    assert list(table.sizes) == [m.size for _, m in expected]
    assert list(table.keys) == [k for k, _ in expected]
    assert [table.member(i) for i in range(len(table))] == [m for _, m in expected]
    return table


# ---- our path == the plain WebDataset pipeline ----------------------------------------------------

def test_paths_shardwriter_shards_identical(tmp_path):
    data = np.random.default_rng(0).standard_normal((1000, 32)).astype(np.float32)
    with wds.ShardWriter(str(tmp_path / "s-%06d.tar"), maxcount=300, verbose=0) as sink:
        for i, row in enumerate(data):
            sink.write({"__key__": f"sample{i:06d}", "x.npy": row})
    urls = sorted(str(p) for p in tmp_path.glob("s-*.tar"))
    assert len(urls) == 4
    ours, plain = _ours(urls, 32, 100), _plain(urls, 100)
    np.testing.assert_array_equal(ours, plain)
    np.testing.assert_array_equal(ours, data)
    assert _runs(Path(urls[0]).read_bytes()) == [300]  # the whole shard in one vectorized run


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_paths_gnu_tar_long_names_identical(tmp_path, fmt):
    rows = np.random.default_rng(1).standard_normal((40, 6))  # float64 on disk
    url = _gnu_tar(tmp_path, fmt, rows)
    ours, plain = _ours([url], 6, 8), _plain([url], 8)
    np.testing.assert_array_equal(ours, plain)
    np.testing.assert_array_equal(ours, rows.astype(np.float32))
    buf = Path(url).read_bytes()
    assert all(m.name.startswith("./" + LONG_DIR) for m in members_of_buffer(buf))
    _same_as_generic(buf)
    if fmt == "gnu":
        assert _runs(buf) == [40]
    else:  # GNU's pax time records change length now and then: runs with generic stretches between
        assert sum(_runs(buf)) > 0


def test_paths_tarfile_formats_and_dtypes_identical(tmp_path):
    rng = np.random.default_rng(2)
    for fmt, dtype in [(tarfile.USTAR_FORMAT, np.float16), (tarfile.GNU_FORMAT, np.float64), (tarfile.PAX_FORMAT, np.int32)]:
        rows = (rng.standard_normal((24, 5)) * 100).astype(dtype)
        url = tmp_path / f"f{fmt}.tar"
        with tarfile.open(url, "w", format=fmt) as tar:
            for i, row in enumerate(rows):
                for ext, payload in (("x.npy", _npy(row)), ("cls", str(i % 7).encode())):
                    info = tarfile.TarInfo(f"{LONG_DIR if fmt != tarfile.USTAR_FORMAT else 'sub'}/s{i:03d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        np.testing.assert_array_equal(_ours([str(url)], 5, 8), _plain([str(url)], 8))
        assert _runs(url.read_bytes()) == [24]


# ---- the vectorized walk == the generic walk -------------------------------------------------------

def _wds_bytes(samples: list[dict]) -> bytes:
    out = io.BytesIO()
    with wds.TarWriter(out) as sink:
        for s in samples:
            sink.write(s)
    return out.getvalue()


def test_paths_fast_walk_irregular_layouts():
    rng = np.random.default_rng(3)
    vec = lambda d=8: rng.standard_normal(d).astype(np.float32)  # noqa: E731
    layouts = {
        "mixed name lengths": [{"__key__": f"s{i}", "x.npy": vec()} for i in range(300)],
        "extra members, some samples only": [
            {"__key__": f"k{i:04d}", "x.npy": vec(), "cls": str(i), **({"txt": "t" * (i % 600)} if i % 7 == 0 else {})}
            for i in range(300)],
        "samples without the key": [{"__key__": f"k{i:04d}", ("y.npy" if i % 50 == 9 else "x.npy"): vec()}
                                    for i in range(300)],
        "a key repeated (samples merge)": [{"__key__": f"k{min(i, 150) if i in (150, 151) else i:04d}",
                                            ("x.npy" if i != 151 else "y.npy"): vec()} for i in range(300)],
        "shapes change midway": [{"__key__": f"k{i:04d}", "x.npy": vec(8 if i < 200 else 9)} for i in range(300)],
    }
    for what, samples in layouts.items():
        buf = _wds_bytes(samples)
        table = _same_as_generic(buf)
        runs = _runs(buf)
        assert any(runs), what  # the fast path did part of the work
        if what == "shapes change midway":  # same tar layout: the .npy header check in gather finds it
            assert runs == [300]
        if what != "shapes change midway":  # the rows are the generic walk's members' arrays
            expected = np.stack([np.load(io.BytesIO(buf[m.offset:m.offset + m.size])) for m in table])
            np.testing.assert_array_equal(np.asarray(gather_npy(buf, table, table.keys, 8)), expected)
        else:
            with pytest.raises(ShardError, match=r"sample k0200: array of shape \(9,\) has 9 values"):
                gather_npy(buf, table, table.keys, 8)


def test_paths_fast_walk_pax_and_long_names_mixed_with_ustar():
    """Pax path records, GNU long names and plain ustar members in one archive, names of several lengths."""
    rng = np.random.default_rng(4)
    parts = []
    for fmt, prefix, n in [(tarfile.PAX_FORMAT, LONG_DIR + "/ü", 150), (tarfile.GNU_FORMAT, LONG_DIR + "/g", 120),
                           (tarfile.USTAR_FORMAT, "plain/u", 130), (tarfile.PAX_FORMAT, "p", 110)]:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
            for i in range(n):
                payload = _npy(rng.standard_normal(4).astype(np.float32))
                info = tarfile.TarInfo(f"{prefix}{i}.x.npy")  # 1 to 3 digits
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        raw = out.getvalue()
        end = len(tario.members_of_buffer(raw)) and max(m.offset + m.size for m in tario.members_of_buffer(raw))
        parts.append(raw[:-(-end // 512) * 512])  # without the end-of-archive blocks: one archive
    buf = b"".join(parts) + bytes(1024)
    table = _same_as_generic(buf)
    assert len(table) == 510
    assert sum(_runs(buf)) >= 400


def test_paths_corrupt_bytes_same_error_or_result():
    """Single-byte damage anywhere in regular shards: the fast walk fails (or not) exactly like the generic one."""
    rng = np.random.default_rng(5)
    shards = [_wds_bytes([{"__key__": f"sample{i:05d}", "x.npy": rng.standard_normal(6).astype(np.float32),
                           "cls": str(i % 3)} for i in range(400)])]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(300):
            payload = _npy(np.full(6, i, np.float32))
            info = tarfile.TarInfo(f"{LONG_DIR}/k{i:05d}.x.npy")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    shards.append(out.getvalue())
    errors = 0
    for buf in shards:
        headers = [m.offset - 512 for m in members_of_buffer(buf)]
        for _ in range(120):
            damaged = bytearray(buf)
            at = int(rng.choice(headers)) + int(rng.integers(0, 512)) if rng.random() < 0.7 else int(rng.integers(0, len(buf)))
            damaged[at] = (damaged[at] + int(rng.integers(1, 256))) % 256
            errors += _same_as_generic(bytes(damaged)) is None
        for cut in rng.integers(0, len(buf), 20):
            errors += _same_as_generic(buf[:int(cut)]) is None
    assert errors > 50  # the damage was real: many of the cases are errors


def test_paths_read_shard_gives_each_file_whole(tmp_path):
    files = {"a": b"A" * 5000, "short": b"C" * 100, "empty": b"", "big": bytes(range(256)) * 400}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    first = read_shard(str(tmp_path / "a"))
    view = np.frombuffer(first, np.uint8)[10:20]  # like the rows a worker still batches from
    for name, data in files.items():
        assert read_shard(str(tmp_path / name)) == data
    assert bytes(view) == b"A" * 10  # later reads leave an earlier shard's rows alone
    with pytest.raises(FileNotFoundError):
        read_shard(str(tmp_path / "missing.tar"))


def test_paths_read_ahead_gives_each_shard_its_own_bytes(tmp_path):
    files = {}
    for name, fill in (("a", b"A"), ("b", b"B"), ("c", b"C"), ("d", b"D")):
        files[name] = tmp_path / f"{name}.bin"
        files[name].write_bytes(fill * 90000)
    a = read_shard_ahead(str(files["a"]), str(files["b"]))
    source._AHEAD[0].thread.join()  # the read-ahead of b is done: it must not have used a's buffer
    assert a[:] == b"A" * 90000
    view = np.frombuffer(a, np.uint8)  # the caller's rows of shard a, alive while it opens the next one
    b = read_shard_ahead(str(files["b"]), str(files["d"]))  # from the read-ahead
    assert b[:] == b"B" * 90000 and bytes(view[:3]) == b"AAA"
    c = read_shard_ahead(str(files["c"]))  # not what was read ahead: read now, the read-ahead dropped
    assert c[:] == b"C" * 90000 and b[:3] == b"BBB" and bytes(view[-3:]) == b"AAA"
    files["d"].unlink()
    read_shard_ahead(str(files["a"]), str(files["d"]))  # the read-ahead of d fails ...
    with pytest.raises(FileNotFoundError):
        read_shard_ahead(str(files["d"]))  # ... and the caller gets the error when it asks for d
