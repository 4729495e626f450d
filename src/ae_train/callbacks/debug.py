"""DebugCallback: the epoch markers and the every-N-batches progress lines of the debug logs.

Marker order follows the guide: TRAINING END is written when the rank's last training batch is done,
which is before Lightning runs validation (Lightning calls `on_train_epoch_end` only after the
epoch's validation, so that hook alone would put TRAINING END after VALIDATION END).
Each progress line splits the interval's time into data wait, forward, backward (with the DDP gradient
sync), optimizer and other (step_split.py: host clock on the CPU, CUDA events on a GPU); the epoch's
split is kept for EpochSummary. The per-step path is five clock reads (or event records), float adds
and an integer test; the loss (and on a GPU the last event) is waited for only on logged steps.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from ..batch import samples_of
from ..stacks import rss_mb
from .step_split import BACKWARD, DATA, FORWARD, OPTIMIZER, OTHER, StepSplit, format_split
from .step_start import StepStart

log = logging.getLogger(__name__)


class DebugCallback(Callback):
    def __init__(self, train_every: int = 500, val_every: int = 20, debug: bool = True):
        if train_every < 1 or val_every < 1:
            raise ValueError(f"train_every and val_every must be >= 1, got {train_every}, {val_every}")
        self.train_every, self.val_every, self.debug = train_every, val_every, debug
        self._train_open = False  # TRAINING START written, END not yet
        self._t_epoch = self._t_val = self._t_ready = 0.0
        self.split = StepSplit(torch.cuda.is_available())  # replaced in setup() by the trainer's device
        self._hooks: list = []  # torch optimizer hook handles
        self._step_start: StepStart | None = None  # the DDP step-start collective we time (step_start.py)
        self._t_window = 0.0
        self._window_batches = 0
        self._val_batches = 0

    # ---- training ----
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.split = StepSplit(trainer.strategy.root_device.type == "cuda")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The end of the optimizer step: a torch hook, since no Lightning hook runs right after it.
        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]
        # In DDP every step starts with a collective (step_start.py: the SIGTERM check), before the batch
        # is fetched: a rank slow after its backward (optimizer, callbacks) is waited for there. That
        # wait is time spent waiting for the other ranks, as in the gradient all-reduce, so it counts
        # as backward, not as data wait. Without the hook (another Lightning) the split stays as it is.
        self._step_start = StepStart.of(trainer) if trainer.world_size > 1 else None
        if self._step_start is not None:
            self._step_start.before, self._step_start.after = self._sync_starts, self._sync_ends

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for h in self._hooks:
            h.remove()
        if self._step_start is not None:
            self._step_start.before = self._step_start.after = None
            self._step_start.release()
        self._hooks, self._step_start = [], None

    def _sync_starts(self) -> None:
        if self._train_open:
            self.split.mark(OTHER)  # the loop's work since the last batch end

    def _sync_ends(self) -> None:
        if self._train_open:
            self.split.mark(BACKWARD)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._train_open:
            self.split.mark(OPTIMIZER)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_training(trainer, "")

    def _start_training(self, trainer: pl.Trainer, note: str) -> None:
        log.info(lf.marker_start(lf.TRAINING % trainer.current_epoch) + note)
        self._train_open = True
        self._t_epoch = self._t_window = self._t_ready = self.split.start()
        self._window_batches = 0

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._train_open:  # resumed mid-epoch: Lightning skips on_train_epoch_start
            self._start_training(trainer, lf.RESUMED_AT % batch_idx)
        self.split.mark(DATA)  # since the previous batch ended: the loader's share

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._train_open:
            self.split.mark(FORWARD)

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_open:
            self.split.mark(BACKWARD)  # in DDP: includes the gradient all-reduce, the wait for slower ranks

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._t_ready = self.split.mark(OTHER)
        self._window_batches += 1
        if batch_idx % self.train_every == 0:
            if self.debug:
                self._progress_line(trainer, outputs, batch, batch_idx)
            else:
                self.split.fold()  # debug off: still read the events each interval (the epoch's split)
        if batch_idx + 1 >= trainer.num_training_batches:
            self._end_training(trainer, batch_idx + 1)

    def _progress_line(self, trainer: pl.Trainer, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss_value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float("nan")  # the one sync
        elapsed = max(1e-9, self._t_ready - self._t_window)
        cuda = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
        log.debug(lf.TRAINING_STEP.template, batch_idx, loss_value, batch_idx + 1, trainer.current_epoch,
                  trainer.global_step, self._window_batches * len(samples_of(batch)) / elapsed, format_split(self.split.fold()), self.split.clock,
                  rss_mb(), cuda)
        self._t_window, self._window_batches = self._t_ready, 0

    def _end_training(self, trainer: pl.Trainer, batches: int | None = None) -> None:
        if self._train_open:
            self._train_open = False
            if batches is None:  # cut short: the batches whose end hook ran
                batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            log.info(lf.MARKER_END.template, lf.TRAINING % trainer.current_epoch, batches,
                     time.perf_counter() - self._t_epoch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_training(trainer)  # an epoch cut short (limit, stop) still gets its END marker

    # ---- validation ----
    def _val_name(self, trainer: pl.Trainer) -> str:
        return lf.SANITY if trainer.sanity_checking else lf.VALIDATION % trainer.current_epoch

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end_training(trainer)
        log.info(lf.marker_start(self._val_name(trainer)))
        self._t_val, self._val_batches = time.perf_counter(), 0

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._val_batches += 1
        if self.debug and batch_idx % self.val_every == 0:
            loss = float(outputs.detach()) if isinstance(outputs, torch.Tensor) else float("nan")
            log.debug(lf.VAL_STEP.template, batch_idx, loss, trainer.current_epoch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info(lf.MARKER_END.template, self._val_name(trainer), self._val_batches, time.perf_counter() - self._t_val)
