"""Callbacks that tests load into real runs through `--trainer.callbacks=ddp_helpers.<Name>`."""
from __future__ import annotations

import warnings

from pytorch_lightning.callbacks import Callback


class WarnOnRank1(Callback):
    """A Python warning raised on rank 1 only: it must reach the shared train log, rank-stamped."""

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank == 1:
            warnings.warn("rank-one test warning: disk is 99% full", UserWarning)
            print("stray print from rank 1")


class SlowSteps(Callback):
    """30 ms per training batch: long enough epochs to interrupt one in the middle."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time
        time.sleep(0.03)


class CrashOnRank1(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and batch_idx == 3:
            raise RuntimeError("injected failure on rank 1")


class KillRank1(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and batch_idx == 3:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


class DeleteShardAfterEpoch0(Callback):
    """Removes the shard named by $AE_TEST_DELETE once epoch 0 is done: a file that vanished mid-run."""

    def on_train_epoch_end(self, trainer, pl_module):
        import os
        if trainer.global_rank == 0 and trainer.current_epoch == 0:
            os.remove(os.environ["AE_TEST_DELETE"])


class BlockRank1AtEpochEnd(Callback):
    """Rank 1 never finishes its last training batch: rank 0 goes on to the epoch-end collective and waits."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and batch_idx + 1 == trainer.num_training_batches:
            import time
            time.sleep(3600)


class PauseRank0Once(Callback):
    """Rank 0 stalls 7 s once (epoch 0, batch 10), then goes on: an alert, then `progress resumed`."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.current_epoch == 0 and batch_idx == 10:
            import time
            time.sleep(7)
