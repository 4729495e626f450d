"""The one tar-member writer: what it writes reads back the same through Python's tarfile, our generic walk
and the streaming walk (plain and gzip), and a file that changes while it is added leaves a sound archive."""
from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest

from ae_train.data.stream import iter_samples
from ae_train.data.tario import group_samples, members_of_buffer
from ae_train.data.tarwriter import TarWriter

LONG = "d" * 120  # a name over 100 bytes: a pax path record


def test_tarwriter_members_read_back_by_every_reader():
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    for gz in (False, True):
        out = io.BytesIO()
        with TarWriter(out, gz=gz, mtime=0) as tar:
            for i, row in enumerate(rows):
                tar.add_array(f"{LONG}/s{i}.x.npy", row)
                tar.add(f"{LONG}/s{i}.cls", str(i).encode())
        raw = gzip.decompress(out.getvalue()) if gz else out.getvalue()
        assert (out.getvalue()[:2] == b"\x1f\x8b") == gz
        with tarfile.open(fileobj=io.BytesIO(raw)) as t:
            infos = t.getmembers()
            assert [m.name for m in infos] == [f"{LONG}/s{i}.{e}" for i in range(3) for e in ("x.npy", "cls")]
            assert all(m.mtime == 0 and m.mode == 0o644 for m in infos)
        samples = group_samples(members_of_buffer(raw))
        assert [k for k, _ in samples] == [f"{LONG}/s{i}" for i in range(3)]
        for i, (_, parts) in enumerate(samples):
            m = parts["x.npy"]
            np.testing.assert_array_equal(np.load(io.BytesIO(raw[m.offset:m.offset + m.size])), rows[i])
        streamed = list(iter_samples(io.BytesIO(out.getvalue())))
        assert [parts["cls"] for _, parts in streamed] == [b"0", b"1", b"2"]


@pytest.mark.parametrize("change, expected", [(b"z" * 100, b"z" * 100 + bytes(2900)),  # truncated: NULs
                                                (None, b"x" * 3000)])  # grown: cut at the size
def test_tarwriter_a_log_written_to_while_added_keeps_the_size_in_its_header(tmp_path, monkeypatch, change, expected):
    """A live log changes between the stat that sizes its header and the copy of its bytes."""
    log = tmp_path / "debug.log"
    log.write_bytes(b"x" * 3000)
    stat = tarfile.TarFile.gettarinfo

    def stat_then_write(self, *args, **kwargs):
        info = stat(self, *args, **kwargs)
        if change is None:
            with open(log, "ab") as f:
                f.write(b"y" * 500)
        else:
            log.write_bytes(change)
        return info

    monkeypatch.setattr(tarfile.TarFile, "gettarinfo", stat_then_write)
    out = io.BytesIO()
    with TarWriter(out) as tar:
        tar.add_file(log, "logs/debug.log")
        tar.add("after.txt", b"next member")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        assert t.extractfile("logs/debug.log").read() == expected
        assert t.extractfile("after.txt").read() == b"next member"  # the archive goes on soundly
