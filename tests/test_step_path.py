"""DebugCallback's per-step path reads nothing back from the device outside the logging interval.

A subprocess (training never runs inside pytest) counts every `.item()`, `.cpu()`, `.tolist()` and
`float(tensor)` call made while a frame of callbacks/debug.py is on the stack, during a real 1-device
CPU `Trainer.fit` of 2 epochs x 20 steps with `DebugCallback(train_every=10, val_every=5, debug=True)`.
Those calls must be exactly one per progress line written: the lines are the only place it may sync.
"""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = r'''
import collections, json, logging, sys, warnings
import torch
import pytorch_lightning as pl
from torch.utils.data import DataLoader

warnings.filterwarnings("ignore")
from ae_train.callbacks.debug import DebugCallback
from ae_train.model import AutoEncoder

calls = collections.Counter()

def in_debug_callback():
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.replace("\\", "/").endswith("ae_train/callbacks/debug.py"):
            return True
        f = f.f_back
    return False

def counting(name, original):
    def wrapper(self, *args, **kwargs):
        if in_debug_callback():
            calls[name] += 1
        return original(self, *args, **kwargs)
    return wrapper

for name in ("item", "cpu", "tolist", "__float__"):
    setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

lines = collections.Counter()
class Lines(logging.Handler):
    def emit(self, record):
        text = record.getMessage()
        lines["train"] += text.startswith("Training step")
        lines["val"] += text.startswith("Validation step")
root = logging.getLogger()
root.addHandler(Lines())
root.setLevel(logging.DEBUG)
for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(noisy).setLevel(logging.ERROR)

pl.seed_everything(0, verbose=False)
train, val = torch.randn(160, 16), torch.randn(96, 16)  # 20 and 12 batches of 8
trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="auto", max_epochs=2, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=2, log_every_n_steps=1,
                     callbacks=[DebugCallback(train_every=10, val_every=5, debug=True)])
trainer.fit(AutoEncoder(16, 4, [32], total_steps=40), DataLoader(train, batch_size=8), DataLoader(val, batch_size=8))
print(json.dumps({"calls": dict(calls), "lines": dict(lines), "steps": trainer.global_step}))
'''


def test_step_path_syncs_only_on_logged_steps(tmp_path):
    script = tmp_path / "count_syncs.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    calls, lines = result["calls"], result["lines"]
    assert result["steps"] == 40
    # train: batches 0 and 10 of each epoch; validation: batch 0 of the sanity check, 0, 5, 10 of each epoch
    assert lines == {"train": 4, "val": 1 + 2 * 3}
    syncs = sum(calls.values())
    assert syncs > 0, "the counters saw nothing: the test would pass whatever the callback did"
    assert syncs == lines["train"] + lines["val"], calls
    assert set(calls) == {"__float__"}, calls  # the one read of the loss per progress line
