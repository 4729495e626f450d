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
