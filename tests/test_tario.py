"""The tar reader against shards written by webdataset, Python's tarfile and GNU tar."""
import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from ae_train.data.npyrows import gather_npy
from ae_train.data.shards import count_shard
from ae_train.data.tario import ShardError, group_samples, members_of_buffer


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _read_all(path: Path, key: str, dim: int) -> np.ndarray:
    buf = path.read_bytes()
    samples = [s for s in group_samples(members_of_buffer(buf)) if key in s[1]]
    return gather_npy(buf, [p[key] for _, p in samples], [k for k, _ in samples], dim)


def test_tario_reads_webdataset_writer_shards(tmp_path):
    data = np.random.default_rng(0).standard_normal((37, 12)).astype(np.float32)
    with wds.ShardWriter(str(tmp_path / "s-%06d.tar"), maxcount=20, verbose=0) as sink:
        for i, row in enumerate(data):
            sink.write({"__key__": f"sample{i:05d}", "x.npy": row, "cls": i % 3})
    shards = sorted(tmp_path.glob("s-*.tar"))
    got = np.concatenate([_read_all(p, "x.npy", 12) for p in shards])
    np.testing.assert_array_equal(got, data)
    assert [count_shard(str(p))["exts"]["x.npy"] for p in shards] == [20, 17]


def test_tario_reads_gnu_tar_long_names_and_pax(tmp_path):
    src = tmp_path / "src"
    long_dir = src / ("d" * 120)  # > 100 chars: GNU long-name (L) members / pax path records
    long_dir.mkdir(parents=True)
    rows = np.arange(5 * 6, dtype=np.float64).reshape(5, 6)
    for i, row in enumerate(rows):
        (long_dir / f"k{i:03d}.x.npy").write_bytes(_npy(row))
        (long_dir / f"k{i:03d}.txt").write_text("label")
    expected = rows.astype(np.float32)
    for fmt in ("gnu", "pax"):
        out = tmp_path / f"{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", "--sort=name", "-cf", str(out), "-C", str(src), "."], check=True)
        members = members_of_buffer(out.read_bytes())
        assert all(m.name.startswith("./" + "d" * 120) for m in members)
        assert len(group_samples(members)) == 5  # a sample's members are adjacent, as WebDataset requires
        np.testing.assert_array_equal(_read_all(out, "x.npy", 6), expected)


def test_tario_reads_python_tarfile_pax_with_mixed_dtypes(tmp_path):
    out = tmp_path / "mixed.tar"
    arrays = [np.arange(4, dtype=np.int16), np.ones(4, dtype=np.float16), np.full(4, 2.5, dtype=">f8")]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, a in enumerate(arrays):
            payload = _npy(a)
            info = tarfile.TarInfo(f"ünïcode/sample{i}.x.npy")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    got = _read_all(out, "x.npy", 4)
    np.testing.assert_array_equal(got, np.stack([a.astype(np.float32) for a in arrays]))


def test_tario_rejects_truncated_garbage_and_wrong_shapes(tmp_path):
    good = tmp_path / "good.tar"
    with wds.TarWriter(str(good)) as sink:
        for i in range(4):
            sink.write({"__key__": f"s{i}", "x.npy": np.zeros(8, np.float32)})
    raw = good.read_bytes()
    with pytest.raises(ShardError, match="truncated"):
        members_of_buffer(raw[:1500])
    with pytest.raises(ShardError, match="not a tar file"):
        members_of_buffer(b"this is no tar at all" * 100)
    with pytest.raises(ShardError, match="model.input_dim is 16"):
        _read_all(good, "x.npy", 16)
    assert members_of_buffer(b"\0" * 1024) == []  # an empty archive is valid and holds nothing
