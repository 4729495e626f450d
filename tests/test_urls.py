"""Shard specs and openers: every URL form expands and opens, and a failed read says why."""
from __future__ import annotations

import gzip
import os
import shutil

import pytest

from ae_train.data.source import open_shard, read_small
from ae_train.data.urls import DataError, beside, is_url, list_shards, shard_name
from conftest import make_shards


def test_urls_local_forms_with_compressed_shards(tmp_path):
    plain = make_shards(tmp_path / "d", [3, 4])
    for p in plain:
        with open(p, "rb") as f, gzip.open(p + ".gz", "wb") as g:
            shutil.copyfileobj(f, g)
    os.replace(plain[1] + ".gz", str(tmp_path / "d" / "train-000001.tgz"))
    d = tmp_path / "d"
    assert list_shards(str(d), "k") == [str(d / "train-000000.tar"), str(d / "train-000000.tar.gz"),
                                        str(d / "train-000001.tar"), str(d / "train-000001.tgz")]
    assert list_shards(f"{d}/train-{{000000..000000}}.tar.gz", "k") == [str(d / "train-000000.tar.gz")]
    assert list_shards(f"{d}/*.tgz", "k") == [str(d / "train-000001.tgz")]
    # a single compressed shard is a shard, not a list file (it used to be read as text)
    assert list_shards(str(d / "train-000001.tgz"), "k") == [str(d / "train-000001.tgz")]
    assert list_shards(f"file:{d}/train-000000.tar", "k") == [str(d / "train-000000.tar")]  # file: is a path


def test_urls_list_file_mixes_forms(tmp_path):
    make_shards(tmp_path, [3])
    lst = tmp_path / "shards.txt"
    lst.write_text("# local and remote\ntrain-000000.tar\nhttp://h/x-{0..1}.tar.gz\npipe:cat /a/b.tar\n\n")
    assert list_shards(str(lst), "k") == [str(tmp_path / "train-000000.tar"), "http://h/x-0.tar.gz",
                                          "http://h/x-1.tar.gz", "pipe:cat /a/b.tar"]
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="neither a shard .* nor a text file listing shards"):
        list_shards(str(binary), "data.train_shards")


def test_urls_remote_specs_expand_and_are_never_globs():
    assert is_url("s3://b/k") and is_url("pipe:curl x") and is_url("https://h/p") and not is_url("/data/x.tar")
    assert list_shards("s3://bucket/train-{00..02}.tar", "k") == [f"s3://bucket/train-0{i}.tar" for i in range(3)]
    presigned = "https://h/train-000.tar?X-Amz-Signature=ab*c&X-Amz-Expires=3600"
    assert list_shards(presigned, "k") == [presigned]
    assert list_shards("pipe:curl -s https://h/t-{0..1}.tar", "k") == ["pipe:curl -s https://h/t-0.tar",
                                                                       "pipe:curl -s https://h/t-1.tar"]


def test_urls_index_beside_every_form():
    assert beside("/d/train-0.tar", "ae_index.json") == "/d/ae_index.json"
    assert beside("s3://b/p/train-0.tar.gz", "ae_index.json") == "s3://b/p/ae_index.json"
    assert beside("https://h/p/t.tar?sig=1", "ae_index.json") == "https://h/p/ae_index.json"
    assert beside("pipe:curl -s 'https://h/p/t-1.tgz'", "ae_index.json") == "pipe:curl -s 'https://h/p/ae_index.json'"
    assert beside("pipe:aws s3 cp s3://b/p/t.tar -", "ae_index.json") == "pipe:aws s3 cp s3://b/p/ae_index.json -"
    assert beside("pipe:generate-data", "ae_index.json") is None
    assert shard_name("pipe:curl -s https://h/p/t-1.tgz") == "t-1.tgz" and shard_name("s3://b/x/y.tar") == "y.tar"


def test_urls_open_http_pipe_and_their_errors(http_root):
    root, base = http_root
    (root / "hello.bin").write_bytes(b"hello shard")
    assert read_small(f"{base}/hello.bin") == b"hello shard"
    assert read_small(f"pipe:curl -s {base}/hello.bin") == b"hello shard"
    with pytest.raises(OSError, match=r"curl exited with code 22: .*404"):
        read_small(f"{base}/missing.bin")
    with pytest.raises(OSError, match=r"pipe command 'exit 3' exited with code 3"):
        read_small("pipe:exit 3")
    with pytest.raises(OSError, match="exited with code 127: .*not found"):
        read_small("pipe:no-such-command-ae-train")


def test_urls_open_s3_and_its_errors(s3_env, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ae-urls")
    s3.put_object(Bucket="ae-urls", Key="a/b.bin", Body=b"s3 bytes")
    with open_shard("s3://ae-urls/a/b.bin") as f:
        assert f.read() == b"s3 bytes"
    with pytest.raises(OSError, match=r"S3 NoSuchKey \(HTTP 404\)"):
        read_small("s3://ae-urls/a/missing.bin")
    with pytest.raises(OSError, match=r"S3 NoSuchBucket"):
        read_small("s3://ae-no-such-bucket/x.tar")


def test_urls_bad_specs_are_one_data_error(tmp_path):
    for spec, words in ((f"{tmp_path}/t-{{0..1.tar", "unbalanced braces"), ("s3://b/t-}.tar", "unbalanced braces"),
                        ("/" + "a" * 5000 + ".tar", "cannot use the shard spec")):
        with pytest.raises(DataError, match=words):
            list_shards(spec, "data.train_shards")
    lst = tmp_path / "list.txt"
    lst.write_text("good-{0..1}.tar\nbad-{0..1.tar\n")
    with pytest.raises(DataError, match=r"data.train_shards \(.*list.txt\): unbalanced braces in 'bad-\{0..1.tar'"):
        list_shards(str(lst), "data.train_shards")
