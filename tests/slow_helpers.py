"""Callbacks that make ranks slow for real, loaded through `--trainer.callbacks=slow_helpers.<Name>`.

The delays are per rank, from environment variables (callbacks are built with no arguments):
`AE_TEST_FORWARD_S=0.01,0.04` sleeps that long inside every forward of rank 0, rank 1 (a forward
pre-hook on the module: the time lands in the model's own forward); `AE_TEST_OPEN_S=0,0.3` delays
every open of a `.tar` shard by a DataLoader worker of that rank (slow storage: the time lands in the
worker's read, and the rank's main process waits for the batches); `AE_TEST_BATCH_END_S=0.03,0` sleeps
in every on_train_batch_end of that rank (after the optimizer step: slow callbacks or logging).
"""
from __future__ import annotations

import builtins
import os
import time

from pytorch_lightning.callbacks import Callback


def _delay(var: str, rank: int) -> float:
    values = [float(v) for v in os.environ.get(var, "").split(",") if v.strip()]
    return values[rank] if rank < len(values) else 0.0


class SlowForward(Callback):
    def on_fit_start(self, trainer, pl_module):
        delay = _delay("AE_TEST_FORWARD_S", trainer.global_rank)
        if delay > 0:
            pl_module.register_forward_pre_hook(lambda module, args: time.sleep(delay))


class SlowShardOpen(Callback):
    """Patches `open` and `os.open` in this rank's process before its workers fork: whichever the reader
    uses, a worker opening a `.tar` file waits `delay` seconds first."""

    def setup(self, trainer, pl_module, stage):
        delay = _delay("AE_TEST_OPEN_S", trainer.global_rank)
        if delay <= 0:
            return
        main_pid = os.getpid()

        def slow(original):
            def opener(file, *args, **kwargs):
                if os.getpid() != main_pid and str(file).endswith(".tar"):
                    time.sleep(delay)
                return original(file, *args, **kwargs)
            return opener

        builtins.open = slow(builtins.open)
        os.open = slow(os.open)


class SlowBatchEnd(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        delay = _delay("AE_TEST_BATCH_END_S", trainer.global_rank)
        if delay > 0:
            time.sleep(delay)
