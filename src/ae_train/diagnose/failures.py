"""What a failure line says: its kind, whether it is a failure of its own or what a rank sees after
another one failed, and the usual cause of that kind (the root cause of `ae-train diagnose`).

Standard library only, log text only. parse.py hands over the lines that can end a run (an uncaught
exception, a failed checkpoint write, the shard-error limit, a lost launcher, an interrupt) and the
lines C++ code prints without a time stamp (gloo, NCCL); rootcause.py orders them. Our own lines are
read with logformat's patterns; the texts of torch, gloo, NCCL and Python's tracebacks are not ours,
so their patterns are here as named constants, each beside the cause it usually has.
"""
from __future__ import annotations

import re
import signal
from typing import NamedTuple

from ae_train import logformat as lf
from ae_train.diagnose.records import Failure, text

# Roles. OWN: a failure of its own (the candidates for the first failure); PEER: what a rank sees when
# another one failed first (the first failure only when no rank shows one of its own); AFTER: what
# the run did about a failure (the launcher's exit and stop lines, ranks stopping together).
OWN, PEER, AFTER = "own", "peer", "after"

# ---- the usual causes ----
CAUSE_EXCEPTION = ("an error in what this rank runs (the model, a callback, the data path, a library): its traceback "
                   "follows that line")
CAUSE_WORKER_EXCEPTION = ("an error in this DataLoader worker's data path (reading, decoding, a transform): the "
                          "worker's own traceback follows that line, after `Original Traceback`")
CAUSE_SIGKILL = ("a SIGKILL without a traceback is most often the kernel's OOM killer: check `dmesg -T | grep -i -E "
                 "'out of memory|killed process'` on that host; else the job scheduler (a memory or time limit) or a "
                 "kill -9")
CAUSE_WORKER_MEMORY = ("; every DataLoader worker holds its own read-ahead: fewer data.num_workers or a smaller "
                       "data.batch_size need less memory")
CAUSE_SIGBUS = ("shared memory ran out (batches cross from workers to the rank through it): `df -h /dev/shm`; in a "
                "container raise its --shm-size; or a memory-mapped file was truncated while in use")
CAUSE_NATIVE = ("a crash in native code (a decoder, CUDA or NCCL, a driver): the lines without a time stamp at the "
                "end of that debug log are its last output")
CAUSE_ABORT = ("an abort in native code: most often NCCL's watchdog after a collective timed out, a CUDA assertion or "
               "an uncaught C++ exception; the lines without a time stamp at the end of that debug log say which")
CAUSE_OTHER_SIGNAL = "a signal from outside the run (a kill, the job scheduler)"
CAUSE_EXITED = ("the rank exited without logging why (sys.exit or os._exit in user code or a library): the last "
                "lines of its debug log are its last output")
CAUSE_CUDA_OOM = ("the GPU ran out of memory: lower data.batch_size (or the model's size), or free the GPU of other "
                  "processes (nvidia-smi)")
CAUSE_CUDA_ERROR = ("a CUDA kernel failed (often an index out of range in the model or loss; else the driver or the "
                    "GPU: `nvidia-smi`, `dmesg` for Xid errors); rerun with CUDA_LAUNCH_BLOCKING=1 to name the "
                    "operation")
CAUSE_HOST_OOM = ("the host ran out of memory: fewer data.num_workers, a smaller data.batch_size, or a node with more "
                  "memory")
CAUSE_DISK_FULL = ("the disk is full: `df -h` on that directory; free space, then run the same command with "
                   "--resume=auto")
CAUSE_QUOTA = "the disk quota is used up: `quota -s`; free space, then run the same command with --resume=auto"
CAUSE_PERMISSION = ("no permission to write there, or the file system is mounted read-only: check the directory's "
                    "owner, mode and mount")
CAUSE_IO = "the storage failed the read or write (a disk or network file system error): `dmesg` names the device"
CAUSE_OPEN_FILES = "the process ran out of file descriptors: raise `ulimit -n`"
CAUSE_WRITE = "the file system refused the write: the reason is in the line"
CAUSE_SHARDS = ("broken, missing or unreachable shards (or the storage serving them): each `Error reading shard` line "
                "names one; fix or replace them, then `ae-train index` their directory")
CAUSE_STOPPING = "the rank stopped the run on purpose: the reason is in the line, and the ERROR lines before it"
CAUSE_NONFINITE = ("the training diverged: a learning rate too high for this model and data (lower model.lr, raise "
                   "model.warmup_steps, keep trainer.gradient_clip_val), an overflow in reduced precision (try "
                   "trainer.precision=32-true), or inputs far outside the usual range (the line names the batch's "
                   "samples); no checkpoint holds these weights: --resume=auto goes on from the last good one")
CAUSE_LAUNCHER_GONE = ("the launcher (or torchrun's agent, srun's step) was killed, most often by the OOM killer "
                       "(`dmesg`) or the job scheduler; the ranks then stop on their own")
CAUSE_INTERRUPT = "a SIGINT sent to the rank itself (Ctrl-C in a terminal of its process group, `kill -INT`)"
CAUSE_CONNECT = ("the ranks could not reach each other at start-up: MASTER_ADDR/MASTER_PORT unreachable or left from "
                 "an earlier attempt, a port in use, or a firewall between the nodes")
CAUSE_LOST_PEER = ("another rank died first (its own failure, or its exit in the launcher's lines); if none did, the "
                   "network between the nodes")
CAUSE_TIMEOUT = "another rank stopped calling collectives (stuck or dead) for trainer.ddp_timeout_s"
CAUSE_NCCL = ("most often another rank died first; if none did, a network or driver problem (rerun with "
              "NCCL_DEBUG=INFO)")
# Said of a first failure that is a PEER kind: no rank wrote a failure of its own.
NO_OWN_FAILURE = ("no rank's log shows a failure of its own before it: the rank that went first is on a node whose "
                  "logs are not here, or died without a line (a SIGKILL leaves none: `dmesg` on each host)")


class Kind(NamedTuple):
    role: str
    cause: str


KINDS = {
    "exception": Kind(OWN, CAUSE_EXCEPTION),
    "worker_exception": Kind(OWN, CAUSE_WORKER_EXCEPTION),
    "worker_died": Kind(OWN, CAUSE_SIGKILL + CAUSE_WORKER_MEMORY),
    "killed": Kind(OWN, CAUSE_SIGKILL),            # a rank killed by a signal, no line of its own (the launcher's line)
    "exited": Kind(OWN, CAUSE_EXITED),             # a rank that exited non-zero, no line of its own
    "checkpoint_write": Kind(OWN, CAUSE_WRITE),
    "preempt_save": Kind(OWN, CAUSE_WRITE),        # last.ckpt not saved after SIGTERM
    "shard_limit": Kind(OWN, CAUSE_SHARDS),
    "nonfinite_loss": Kind(OWN, CAUSE_NONFINITE),  # a NaN/inf loss: every rank stops, nothing saved
    "nonfinite_weights": Kind(OWN, CAUSE_NONFINITE),  # NaN/inf weights found at a save
    "stopping": Kind(OWN, CAUSE_STOPPING),         # our `Stopping: <reason>` for any other reason
    "launcher_gone": Kind(OWN, CAUSE_LAUNCHER_GONE),
    "interrupted": Kind(OWN, CAUSE_INTERRUPT),
    "connect_failed": Kind(OWN, CAUSE_CONNECT),
    "lost_peer": Kind(PEER, CAUSE_LOST_PEER),
    "collective_timeout": Kind(PEER, CAUSE_TIMEOUT),
    "nccl": Kind(PEER, CAUSE_NCCL),
    "rank_exit": Kind(AFTER, ""),                  # the launcher: a rank exited, the others are stopped
    "run_stopped": Kind(AFTER, ""),                # the launcher: ranks stopped the run together
    "ranks_killed": Kind(AFTER, ""),               # the launcher: ranks that did not stop are killed
    "stopped_together": Kind(AFTER, ""),           # another rank's line of the same stop (shard limit, failed save)
    "saved_and_stopped": Kind(AFTER, ""),          # a rank the launcher's SIGTERM stopped, after saving
    "orphan_killed": Kind(AFTER, ""),              # a rank that lost its launcher kills itself
    "stopped": Kind(AFTER, ""),                    # a rank whose log just ends: the launcher stopped it
}
# One stop every rank logs: the first line is the failure, the others' lines are the same stop.
TOGETHER = ("shard_limit", "stopping")
# Logged at ERROR by the rank that writes checkpoints (global rank 0), at INFO by the others.
WRITER_ONLY = ("checkpoint_write", "preempt_save", "nonfinite_weights")

# ---- texts that are not ours ----
# torch's DataLoader: a worker that died (its SIGCHLD handler, or the batch ring's own check, with
# the pids), and a worker's exception carried to the rank.
WORKER_DIED = re.compile(rb"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\) (?:is killed by signal: ([^.]+)\.?"
                         rb"|exited unexpectedly(?: with exit code (-?\d+))?)")
WORKER_RAISED = re.compile(rb"Caught (\w+) in DataLoader worker process (\d+)")
# gloo, NCCL and c10d: in an exception's message, or printed by C++ code on a line of its own.
CONNECT_TEXTS = (b"connectFullMesh failed", b"Connection refused")
LOST_PEER_TEXTS = (b"Connection closed by peer", b"Connection reset by peer", b"ncclRemoteError",
                   b"remote process exited", b"NCCL communicator was aborted")
TIMEOUT_TEXTS = (b"collective operation timeout", b"Watchdog caught collective", b"Timed out waiting")
NCCL_TEXTS = (b"NCCL error", b"ncclInternalError", b"ncclSystemError", b"ncclUnhandledCudaError", b"DistBackendError")
TEXT_KINDS = (("connect_failed", CONNECT_TEXTS), ("lost_peer", LOST_PEER_TEXTS),
              ("collective_timeout", TIMEOUT_TEXTS), ("nccl", NCCL_TEXTS))
RAW_TEXTS = tuple(t for _, texts in TEXT_KINDS for t in texts)
# Errors whose text names their cause, checked in this order (CUDA's OutOfMemoryError before MemoryError).
TEXT_CAUSES = (((b"CUDA out of memory", b"OutOfMemoryError", b"CUBLAS_STATUS_ALLOC_FAILED"), CAUSE_CUDA_OOM),
               ((b"CUDA error", b"CUBLAS_STATUS_", b"cuDNN error", b"device-side assert"), CAUSE_CUDA_ERROR),
               ((b"No space left on device",), CAUSE_DISK_FULL),
               ((b"Disk quota exceeded",), CAUSE_QUOTA),
               ((b"Read-only file system", b"Permission denied"), CAUSE_PERMISSION),
               ((b"MemoryError", b"Cannot allocate memory"), CAUSE_HOST_OOM),
               ((b"Too many open files",), CAUSE_OPEN_FILES),
               ((b"Input/output error",), CAUSE_IO),
               ((b"insufficient shared memory", b"Unexpected bus error", b"Bus error"), CAUSE_SIGBUS))
SIGNAL_CAUSES = {"SIGKILL": CAUSE_SIGKILL, "SIGBUS": CAUSE_SIGBUS, "SIGSEGV": CAUSE_NATIVE, "SIGILL": CAUSE_NATIVE,
                 "SIGFPE": CAUSE_NATIVE, "SIGABRT": CAUSE_ABORT}
# `Killed` (strsignal's words, as torch writes a worker's death) -> `SIGKILL`.
SIGNAL_NAMES = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}
# Python's traceback: a block starts with one of these, its frames are `File "...", line N, in f`.
TRACEBACK_HEADS = (b"Traceback (most recent call last)", b"Original Traceback (most recent call last)",
                   b"During handling of the above exception", b"The above exception was the direct cause")
TRACEBACK_FRAME = re.compile(rb'File "(.+?)", line (\d+),? in (.+)')
TRACEBACK_FRAME_HEAD = b'File "'

KEPT = 12  # per rank, its first failure lines (the first failure and what followed); the rest are counted
# The heads of our own lines that can end a run (a rank's main process).
HEADS = (lf.UNCAUGHT.head, lf.STOPPING.head, lf.PREEMPT_SAVED.head, lf.PARENT_GONE.head, lf.PARENT_KILL.head,
         lf.INTERRUPTED.head, lf.NONFINITE_LOSS.head, lf.NONFINITE_WEIGHTS.head)


def role(kind: str) -> str:
    return KINDS[kind].role


def _text_kind(s: bytes) -> str | None:
    return next((kind for kind, texts in TEXT_KINDS if any(t in s for t in texts)), None)


def _exception(thread: str | None, exc: str, msg: bytes, line: str) -> Failure:
    """An uncaught exception, by what its message says: a worker's death or exception, a peer's, its own."""
    f = Failure("exception", line, exception=exc, message=text(msg), thread=thread)
    if m := WORKER_DIED.search(msg):
        f.kind, f.pid = "worker_died", int(m.group(1).split(b",")[0])
        name = text(m.group(2) or b"")
        f.signal = SIGNAL_NAMES.get(name, name or None)
        if m.group(3) and int(m.group(3)) < 0:  # `exited unexpectedly with exit code -9`
            f.signal = signal_name(-int(m.group(3)))
    elif m := WORKER_RAISED.search(msg):
        f.kind, f.worker = "worker_exception", int(m.group(2))
    else:
        f.kind = _text_kind(msg) or "exception"
    return f


def of_line(s: bytes) -> Failure | None:
    """The failure one of our lines reports (s: the message, starting with one of HEADS), or None."""
    line = text(s)
    if m := lf.UNCAUGHT.pattern.match(s):
        return _exception(m.group(1) and text(m.group(1)), text(m.group(2)), m.group(3), line)
    if m := lf.CKPT_WRITE_FAILED.pattern.match(s):
        return Failure("checkpoint_write", line, message=text(m.group(1)))
    if m := lf.SHARD_LIMIT_STOP.match(s):
        return Failure("shard_limit", line, message=text(m.group(1)))
    if m := lf.NONFINITE_LOSS.pattern.match(s):
        return Failure("nonfinite_loss", line, message=f"{text(m.group(1))} at step {int(m.group(3))} (batch "
                       f"{int(m.group(4))} of epoch {int(m.group(2))}); its batch: {text(m.group(6))}")
    if m := lf.NONFINITE_WEIGHTS.pattern.match(s):
        return Failure("nonfinite_weights", line, message=f"at step {int(m.group(2))} of epoch {int(m.group(1))}")
    if lf.NONFINITE_ELSEWHERE.pattern.match(s):  # the other ranks' words for the same stop
        return Failure("stopped_together", line)
    if m := lf.STOPPING.pattern.match(s):  # another reason a rank stops the run on purpose
        return Failure("stopping", line, message=text(m.group(1)))
    if m := lf.PREEMPT_NOT_SAVED.pattern.match(s):
        return Failure("preempt_save", line, signal=text(m.group(1)), message=text(m.group(4)))
    if m := lf.PREEMPT_SAVED.pattern.match(s):
        return Failure("saved_and_stopped", line, signal=text(m.group(1)))
    if m := lf.PARENT_GONE.pattern.match(s):
        return Failure("launcher_gone", line, pid=int(m.group(1)))
    if lf.PARENT_KILL.pattern.match(s):
        return Failure("orphan_killed", line)
    if lf.INTERRUPTED.pattern.match(s):
        return Failure("interrupted", line, signal="SIGINT")
    return None


def of_logged(line: bytes, s: bytes) -> Failure | None:
    """The failure a log line reports (s: its message), or None. A failed save is told at ERROR by the rank
    that writes checkpoints, at INFO by the others: theirs is the same stop."""
    f = of_line(s)
    if f is not None and f.kind in WRITER_ONLY and not line.startswith(b"[ERROR]", lf.TIME_LEN + 1):
        f.kind = "stopped_together"
    return f


def of_raw(line: bytes) -> Failure | None:
    """A line printed without a time stamp (gloo, NCCL, c10d) that says a peer or the connection failed."""
    kind = _text_kind(line)
    return None if kind is None else Failure(kind, text(line)[:300], approx=True)


def signal_name(num: int) -> str | None:
    try:
        return signal.Signals(num).name
    except ValueError:
        return None


def cause(f: Failure) -> str:
    """The usual cause of a failure: what its text names (memory, disk, ...), else its signal, else its kind."""
    said = f"{f.message or ''} {f.raised or ''} {f.text}".encode()
    for texts, why in TEXT_CAUSES:
        if any(t in said for t in texts):
            return why
    if f.signal in SIGNAL_CAUSES and f.kind in ("worker_died", "killed"):
        return SIGNAL_CAUSES[f.signal] + (CAUSE_WORKER_MEMORY if f.kind == "worker_died" and f.signal == "SIGKILL"
                                          else "")
    if f.kind in ("worker_died", "killed") and f.signal:
        return CAUSE_OTHER_SIGNAL
    return KINDS[f.kind].cause


def frame_text(line: bytes) -> str | None:
    """`path:line in func` of a traceback's `File "path", line N, in func`."""
    m = TRACEBACK_FRAME.search(line)
    return m and f"{text(m.group(1))}:{int(m.group(2))} in {text(m.group(3))}"


class Tracker:
    """The failure lines of one log and one rank: the first KEPT of them, each with the first block of the
    traceback that follows it (its innermost frame and the exception line that ends it: for a chained
    exception the earliest cause, for a worker's exception the worker's own)."""

    def __init__(self, file: str, rank: int | None):
        self.file, self.rank = file, rank
        self.kept: list[Failure] = []
        self.count = 0
        self._tb: Failure | None = None  # the failure whose traceback may follow
        self._tb_n = 0                   # the line number read last of it
        self._frame: bytes | None | bool = None  # the latest `File "..."` line; False: the first block is read

    def add(self, f: Failure, t: float | None, n: int) -> bool:
        """A failure line at line n; False when it is only counted (KEPT are kept)."""
        self.count += 1
        self._tb, self._tb_n, self._frame = f, n, None
        if len(self.kept) >= KEPT:
            return False
        f.time, f.rank, f.file, f.line = t, self.rank, self.file, n
        self.kept.append(f)
        return True

    def continues(self, line: bytes, n: int) -> bool:
        """Whether a line without a prefix is the traceback of the failure line above (and read it)."""
        if self._tb is None or n != self._tb_n + 1:
            self._tb = None
            return False
        self._tb_n = n
        s = line.strip()
        if self._frame is False:
            pass
        elif s.startswith(TRACEBACK_FRAME_HEAD):
            self._frame = s
        elif self._frame and line[:1] not in (b" ", b"\t") and s and not s.startswith(TRACEBACK_HEADS):
            self._tb.frame, self._tb.raised = frame_text(self._frame), text(s)[:300]
            self._frame = False  # the rest is the same story from further out
        return True

    def raw(self, line: bytes, n: int, t: float | None) -> Failure | None:
        """C++ output outside any traceback naming a lost peer or a timeout (once per kind): at time t, the line
        before it."""
        f = of_raw(line)
        if f is None or any(x.approx and x.kind == f.kind for x in self.kept) or not self.add(f, t, n):
            return None
        return f
