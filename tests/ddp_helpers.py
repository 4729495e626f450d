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


class BatchHashes(Callback):
    """Appends `epoch batch_idx sha1` of every training batch to $AE_TEST_HASHES/rank<N>.txt."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import hashlib
        import os
        digest = hashlib.sha1(batch.cpu().numpy().tobytes()).hexdigest()[:16]
        with open(os.path.join(os.environ["AE_TEST_HASHES"], f"rank{trainer.global_rank}.txt"), "a") as f:
            f.write(f"{trainer.current_epoch} {batch_idx} {digest}\n")


class KillRank1At(Callback):
    """Rank 1 SIGKILLs itself after batch B of epoch E ($AE_TEST_KILL_AT="E:B"): no signal, no save.
    Under torchrun only in the first attempt (TORCHELASTIC_RESTART_COUNT 0): the restart runs through."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import os
        import signal
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return
        epoch, at = (int(x) for x in os.environ["AE_TEST_KILL_AT"].split(":"))
        if trainer.global_rank == 1 and trainer.current_epoch == epoch and batch_idx == at:
            os.kill(os.getpid(), signal.SIGKILL)


class BlockRank0InStep(Callback):
    """Rank 0 blocks in C (a sleep) inside batch 5 of epoch 0; rank 1 goes on into the next step's
    gradient all-reduce and waits there for it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.current_epoch == 0 and batch_idx == 5:
            import logging
            import time
            logging.getLogger("ae_train.test").warning("test: rank 0 blocks in a sleep")
            time.sleep(3600)


class KillRank0DuringSave(Callback):
    """The 2nd checkpoint save of the run carries 128 MB more; rank 0 SIGKILLs itself once its
    temporary file holds 8 MB: a kill in the middle of writing a checkpoint."""

    saves = 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_rank != 0:
            return
        KillRank0DuringSave.saves += 1
        if KillRank0DuringSave.saves != 2:
            return
        import os
        import signal
        import threading
        import time
        from pathlib import Path

        import torch
        checkpoint["test_blob"] = torch.ones(32 * 2**20)
        tmp = Path(trainer.default_root_dir) / "checkpoints" / f"last.ckpt.tmp{os.getpid()}"

        def kill_when_written():
            while not (tmp.exists() and tmp.stat().st_size > 8 * 2**20):
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_written, daemon=True).start()


class KillWorkerOnRank1(Callback):
    """Rank 1 SIGKILLs one of its DataLoader workers after batch 3: a worker's death (the OOM killer's way)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.current_epoch == 0 and batch_idx == 3:
            import multiprocessing
            import os
            import signal
            workers = sorted(multiprocessing.active_children(), key=lambda p: p.pid)
            os.kill(workers[0].pid, signal.SIGKILL)
