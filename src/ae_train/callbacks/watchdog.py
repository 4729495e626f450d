"""HangWatchdog: a thread per rank that notices when the rank stops making progress, and says where.

The training thread only stores a clock reading and a few integers per step (no formatting, no
syscall beyond the vDSO clock). The watchdog thread wakes every second; after `timeout_s` without
progress it writes `HANG SUSPECTED: ...` (ERROR: debug log, train log, console), the stacks of all
the rank's threads into its debug log, asks the rank's DataLoader workers to dump theirs (SIGUSR1),
and records RSS, CPU time and CUDA memory. It repeats at most once per timeout while stuck and says
`progress resumed after N s` when the rank moves again.

`kill -USR1 <rank pid>` dumps the stacks on demand. The signal reaches this thread through Python's
wakeup fd, which is written by the C-level handler, so it works while the main thread is blocked
inside a collective or a read that never returns to the interpreter.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from .. import stacks

log = logging.getLogger(__name__)


class HangWatchdog(Callback):
    def __init__(self, timeout_s: float = 600, poll_s: float = 1.0):
        if timeout_s <= 0 or poll_s <= 0:
            raise ValueError(f"timeout_s and poll_s must be > 0, got {timeout_s}, {poll_s}")
        self.timeout_s, self.poll_s = timeout_s, min(poll_s, timeout_s / 2)
        self._last = time.monotonic()
        self._phase = "setup"
        self._event: tuple = ("setup", 0, 0)  # (kind, epoch, batch): formatted only when an alert is written
        self._who = "rank ?"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None

    # ---- progress, on the training thread: a clock read and a tuple per step ----
    def _progress(self, phase: str, kind: str, epoch: int = 0, batch: int = 0) -> None:
        self._last, self._phase, self._event = time.monotonic(), phase, (kind, epoch, batch)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._who = f"rank {trainer.global_rank}"
        self._progress("setup", "setup")
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        signal.signal(signal.SIGUSR1, lambda _s, _f: None)  # the wakeup fd carries it to our thread
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="ae-train-watchdog", daemon=True)
        self._thread.start()

    @override
    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._progress("sanity check", "SANITY CHECK START")

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._progress("training (waiting for data)", "TRAINING START", trainer.current_epoch)

    @override
    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._progress("training (in step)", "batch start", trainer.current_epoch, batch_idx)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        last = batch_idx + 1 >= trainer.num_training_batches
        self._progress("between TRAINING END and VALIDATION START" if last else "training (waiting for data)",
                       "TRAINING END" if last else "batch end", trainer.current_epoch, batch_idx)

    @override
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._progress("validation (waiting for data)", "VALIDATION START", trainer.current_epoch)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._progress("validation (waiting for data)", "validation batch end", trainer.current_epoch, batch_idx)

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._progress("after VALIDATION END (checkpoint save or LR scheduler)", "VALIDATION END", trainer.current_epoch)

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._progress("epoch end (checkpoint save or LR scheduler)", "epoch end", trainer.current_epoch)

    @override
    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop.set()
        if self._pipe:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGUSR1, lambda _s, _f: stacks.dump(self._who, "SIGUSR1"))

    # ---- the watchdog thread ----
    def _describe_event(self) -> str:
        kind, epoch, batch = self._event
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - (time.monotonic() - self._last)))
        if kind in ("batch start", "batch end", "validation batch end"):
            return f"{kind} of batch {batch} in epoch {epoch} at {at}"
        return f"{kind} (epoch {epoch}) at {at}"

    def _run(self) -> None:
        alerted_at: float | None = None  # monotonic time of the last alert while stuck
        stuck_since = 0.0
        while not self._stop.is_set():
            ready, _, _ = select.select([self._pipe[0]], [], [], self.poll_s)
            if ready:
                got = os.read(self._pipe[0], 64)
                if signal.SIGUSR1 in got:
                    stacks.dump(self._who, "SIGUSR1")
            now = time.monotonic()
            idle = now - self._last
            if alerted_at is not None and self._last > stuck_since:
                log.warning(lf.RESUMED.template, self._last - stuck_since)
                alerted_at = None
            if idle >= self.timeout_s and (alerted_at is None or now - alerted_at >= self.timeout_s):
                if alerted_at is None:
                    stuck_since = self._last
                alerted_at = now
                self._alert(idle)

    def _alert(self, idle: float) -> None:
        log.error(lf.HANG.template, idle, self._phase,
                  self._describe_event())
        stacks.dump(self._who, "hang")
        workers = stacks.child_pids()
        for pid in workers:  # DataLoader workers write their own stacks into this debug log
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        times = os.times()
        cuda = (f"{torch.cuda.memory_allocated() / 2**20:.0f} MB allocated, "
                f"{torch.cuda.memory_reserved() / 2**20:.0f} MB reserved") if torch.cuda.is_initialized() else "n/a"
        log.info(lf.RESOURCES.template, stacks.rss_mb(), times.user, times.system, cuda, workers or "none")
