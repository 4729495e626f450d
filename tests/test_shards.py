import json

import pytest

from ae_train.data.shards import INDEX_NAME, DataError, list_shards, sample_counts, write_index
from ae_train.data.tario import count_file
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
    assert sample_counts(paths, "x.npy", "k") == [3, 4, 5]
    (tmp_path / INDEX_NAME).unlink()
    with caplog.at_level("INFO"):
        assert sample_counts(paths, "x.npy", "k") == [3, 4, 5]
    assert "counted 3 of 3 shards by tar header scan" in caplog.text
    write_index({p: count_file(p) for p in paths})
    with pytest.raises(DataError, match="holds a sample with 'y.npy'"):
        sample_counts(paths, "y.npy", "data.train_shards")
