"""logformat: every message template, filled with its example, is shown in docs/LOG_FORMAT.md and parsed back
by its own pattern; the logging setup writes lines in logformat's line format."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from ae_train import logformat as lf
from ae_train import logs

DOC = (Path(__file__).resolve().parents[1] / "docs" / "LOG_FORMAT.md").read_text(encoding="utf-8")


def _doc_text(m: lf.Message) -> str:
    text = m.text()
    return text if m.doc_cut is None else text[:text.index(m.doc_cut) + len(m.doc_cut)] + "..."


@pytest.mark.parametrize("name", sorted(lf.MESSAGES))
def test_logformat_message_example_is_in_log_format_doc(name):
    m = lf.MESSAGES[name]
    assert f"`{_doc_text(m)}" in DOC, f"{name}: docs/LOG_FORMAT.md does not show `{_doc_text(m)}`"


@pytest.mark.parametrize("name", sorted(lf.MESSAGES))
def test_logformat_pattern_reads_its_own_template(name):
    m = lf.MESSAGES[name]
    line = m.text().encode() if isinstance(m.pattern.pattern, bytes) else m.text()
    assert m.pattern.search(line), f"{name}: {m.pattern.pattern!r} does not read {m.text()!r}"
    assert m.text().startswith(m.head.decode())


def test_logformat_patterns_read_the_fields():
    assert lf.PROCESSING.pattern.match(lf.PROCESSING.text().encode()).groups() == (
        b"3", b"5", b"train_shards", b"0", b"120", b"15")
    assert lf.COMPLETED.pattern.match(lf.COMPLETED.text().encode()).group(2, 3, 4) == (b"0", b"15", b"train_shards")
    assert lf.OPENING.pattern.match(lf.OPENING.text().encode()).group(1) == b"/data/train-000003.tar"
    assert lf.OPENING.pattern.match(b"Opening shard s3://b/x.tar").group(1) == b"s3://b/x.tar"  # encode.py's line
    assert lf.FINISHED_SHARD.pattern.match(lf.FINISHED_SHARD.text().encode()).group(1) == b"/data/train-000003.tar"
    assert lf.HANG.pattern.match(lf.HANG.text().encode()).group(1, 2) == (b"605", b"training (waiting for data)")
    assert lf.EXITED.pattern.match(lf.EXITED.text().encode()).group(1, 3) == (b"1", b"-9")
    st = lf.TRAINING_STEP.pattern.match(lf.TRAINING_STEP.text().encode())
    assert st.group(1, 2, 3, 4, 5) == (b"500", b"0.098700", b"501", b"0", b"1501")
    sp = lf.SPLIT.search(st.group(6).decode())
    assert [float(x) for x in sp.group(1, 2, 3, 4, 5)] == [3.1, 21.5, 60.2, 9.9, 5.3] and sp.group(6) == "cpu clock"
    ep = lf.EPOCH_TRAIN.pattern.search(lf.EPOCH_TRAIN.text())
    assert ep.group(1, 2, 4) == ("0", "1", "0") and ep.group(3).startswith("data wait 67.6%")
    for what in (lf.SANITY, lf.TRAINING % 0, lf.VALIDATION % 0):
        assert lf.MARKER_START.pattern.match(lf.marker_start(what).encode())
        assert f"`{lf.marker_start(what)}`" in DOC


def test_logformat_split_and_tags_as_documented():
    assert lf.format_split([3.1, 21.5, 60.2, 9.9, 5.3]) in DOC
    assert "TAG is `Rank r/W` in a rank's main process, `Rank r/W Worker w/K` in a DataLoader worker" in DOC
    assert lf.TAG.fullmatch((lf.WORKER_TAG % (1, 2, 0, 4)).encode()).groups() == (b"1", b"2", b"0", b"4")
    assert f"`{lf.LAUNCHER_TAG}`" in DOC


def test_logformat_line_format_is_the_logging_setup_format(tmp_path):
    assert logs.FORMAT == lf.LINE_FORMAT
    rec = logging.LogRecord("ae_train.x", logging.INFO, __file__, 1, lf.PROCESSING.template, lf.PROCESSING.example, None)
    rec.tag = lf.WORKER_TAG % (0, 2, 1, 2)
    line = logging.Formatter(lf.LINE_FORMAT).format(rec)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[INFO\] \[Rank 0/2 Worker 1/2\] Processing 3/5 .*", line)
    assert len(line.split(" [", 1)[0]) == lf.TIME_LEN
    assert "`YYYY-MM-DD HH:MM:SS,mmm [LEVEL] [TAG] message`" in DOC
