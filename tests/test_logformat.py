"""logformat: every message template, filled with its example, is shown in docs/LOG_FORMAT.md and parsed back
by its own pattern; the logging setup writes lines, tags and file names as logformat has them."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ae_train import logformat as lf

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


def test_logformat_file_names_read_back_and_are_documented():
    ts = "20261129_050102"
    assert time.strftime(lf.TS_FORMAT, time.strptime(ts, lf.TS_FORMAT)) == ts
    assert lf.RUN_FILE.fullmatch(lf.TRAIN_LOG % ts).groups() == (None, ts)
    assert lf.RUN_FILE.fullmatch(lf.DEBUG_LOG % (3, ts)).groups() == ("3", ts)
    assert lf.STARTUP_FILE.fullmatch(lf.STARTUP_LOG % (3, ts)).groups() == ("3", ts)
    assert not lf.RUN_FILE.fullmatch(lf.STARTUP_LOG % (3, ts)) and not lf.RUN_FILE.fullmatch(lf.LEDGER % (3, ts))
    for name in (lf.TRAIN_LOG % "<ts>", lf.DEBUG_LOG % ("<N>", "<ts>"), lf.LEDGER % ("<N>", "<ts>"),
                 lf.STARTUP_LOG % ("<N>", "<ts>")):
        assert f"`{name}`" in DOC, name


LOGGING_CHILD = """
import logging, os, sys
from pathlib import Path
from ae_train import logs
d, who, log = Path(sys.argv[1]), sys.argv[2], logging.getLogger("ae_train.test")
if who == "launcher":
    logs.setup_launcher_logging(d, "20260101_000001")
    log.info("from the launcher")
    sys.exit(0)
logs.setup_rank_logging(d, "20260101_000000", 1, 2, debug=True)
if os.fork() == 0:
    logs.set_worker(0, 3)
    log.info("from the worker")
    os._exit(0)
os.wait()
log.warning("from the rank")
"""


def test_logformat_line_format_files_and_tags_are_what_the_logging_setup_writes(tmp_path):
    """A rank, its DataLoader worker and a launcher log through the real setup (in child processes: it takes
    over fds 1 and 2); every file name and line they write reads back through logformat."""
    for who in ("rank", "launcher"):
        r = subprocess.run([sys.executable, "-c", LOGGING_CHILD, str(tmp_path), who], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
    files = {lf.RUN_FILE.fullmatch(p.name).groups(): p for p in tmp_path.iterdir()}
    assert sorted(files, key=str) == sorted([("1", "20260101_000000"), (None, "20260101_000000"),
                                             (None, "20260101_000001")], key=str)
    lines = {key: [line for line in p.read_text().splitlines()] for key, p in files.items()}
    tags = {}
    for key, written in lines.items():
        for line in written:
            time.strptime(line[:lf.TIME_LEN].split(",")[0], "%Y-%m-%d %H:%M:%S")
            level, tag, message = re.fullmatch(r",\d{3} \[(\w+)\] \[(.+?)\] (.*)", line[lf.TIME_LEN - 4:]).groups()
            tags[key, message] = (level, tag)
    assert tags == {(("1", "20260101_000000"), "from the worker"): ("INFO", lf.WORKER_TAG % (1, 2, 0, 3)),
                    (("1", "20260101_000000"), "from the rank"): ("WARNING", lf.RANK_TAG % (1, 2)),
                    ((None, "20260101_000000"), "from the rank"): ("WARNING", lf.RANK_TAG % (1, 2)),
                    ((None, "20260101_000001"), "from the launcher"): ("INFO", lf.LAUNCHER_TAG)}
    assert lf.TAG.fullmatch((lf.WORKER_TAG % (1, 2, 0, 3)).encode()).groups() == (b"1", b"2", b"0", b"3")
    assert "`YYYY-MM-DD HH:MM:SS,mmm [LEVEL] [TAG] message`" in DOC
