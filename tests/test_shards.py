import json

import pytest

from ae_train.data.shards import INDEX_NAME, DataError, list_shards, sample_counts, write_index
from ae_train.data.shards import count_shard
from conftest import make_shards


def test_shards_listing_forms(tmp_path):
    paths = make_shards(tmp_path, [3, 4, 5])
    assert list_shards(f"{tmp_path}/train-{{000000..000002}}.tar", "k") == paths
    assert list_shards(f"{tmp_path}/train-*.tar", "k") == paths
    assert list_shards(str(tmp_path), "k") == paths
    (tmp_path / "list.txt").write_text("# shards\ntrain-000000.tar\n\ntrain-000002.tar\n")
    assert list_shards(str(tmp_path / "list.txt"), "k") == [paths[0], paths[2]]


def test_shards_missing_are_named(tmp_path):
    make_shards(tmp_path, [3])
    with pytest.raises(DataError, match=r"data.train_shards: shard not found: .*train-000001.tar \(and 1 more\)"):
        list_shards(f"{tmp_path}/train-{{000000..000002}}.tar", "data.train_shards")
    with pytest.raises(DataError, match="no shards match the glob"):
        list_shards(f"{tmp_path}/nope-*.tar", "data.train_shards")


def test_shards_counts_from_index_then_header_scan(tmp_path, caplog):
    paths = make_shards(tmp_path, [3, 4, 5])
    index = json.loads((tmp_path / INDEX_NAME).read_text())["shards"]
    assert index["train-000001.tar"]["exts"]["x.npy"] == 4
    assert sample_counts(paths, "x.npy", "k") == ([3, 4, 5], {})
    (tmp_path / INDEX_NAME).unlink()
    with caplog.at_level("INFO"):
        assert sample_counts(paths, "x.npy", "k") == ([3, 4, 5], {})
    assert "counted 3 of 3 shards by tar header scan" in caplog.text
    write_index({p: count_shard(p) for p in paths})
    with pytest.raises(DataError, match="holds a readable sample with 'y.npy'"):
        sample_counts(paths, "y.npy", "data.train_shards")


def test_shards_problems_are_reported_not_fatal(tmp_path):
    import numpy as np
    import webdataset as wds

    paths = make_shards(tmp_path, [3, 4])
    garbage = tmp_path / "train-000002.tar"
    garbage.write_bytes(b"no tar here" * 100)
    empty = tmp_path / "train-000003.tar"
    empty.write_bytes(b"\0" * 10240)
    partial = tmp_path / "train-000004.tar"
    with wds.TarWriter(str(partial)) as sink:
        sink.write({"__key__": "a", "x.npy": np.zeros(16, np.float32)})
        sink.write({"__key__": "b", "y.npy": np.zeros(16, np.float32)})
    urls = paths + [str(garbage), str(empty), str(partial)]
    counts, problems = sample_counts(urls, "x.npy", "k")
    assert counts == [3, 4, 0, 0, 1]
    assert problems[str(garbage)].startswith("not a tar file")
    assert problems[str(empty)] == "holds no samples (empty tar); skipped"
    assert problems[str(partial)] == "1 of 2 samples have no 'x.npy' member; those are skipped"
