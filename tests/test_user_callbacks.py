"""trainer.callbacks are built in the launcher's checks (lightning_args.build): a bad one is one line before
any rank starts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ae_train import lightning_args
from ae_train.config import ConfigError
from ae_train.exitcodes import ExitCode
from conftest import ROOT, make_shards


@pytest.mark.parametrize("path,message", [
    ("EarlyStopping", "'EarlyStopping' is not a dotted path to a class"),
    ("no_such_package.Thing", "cannot load 'no_such_package.Thing': ModuleNotFoundError: No module named 'no_such_package'"),
    ("pytorch_lightning.callbacks.NoSuchCallback", "cannot load 'pytorch_lightning.callbacks.NoSuchCallback': "
                                                   "AttributeError: module 'pytorch_lightning.callbacks' has no attribute"),
    ("collections.OrderedDict", "collections.OrderedDict is not a Lightning callback"),
    ("os.path", "cannot build os.path() with no arguments: TypeError"),
])
def test_user_callbacks_bad_paths_are_config_errors(path, message):
    with pytest.raises(ConfigError, match="^trainer.callbacks: ") as e:
        lightning_args.build([path], "trainer.callbacks")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_user_callbacks_builds_lightning_callbacks():
    from pytorch_lightning.callbacks import LearningRateMonitor
    built = lightning_args.build(["pytorch_lightning.callbacks.LearningRateMonitor"], "trainer.callbacks")
    assert len(built) == 1 and isinstance(built[0], LearningRateMonitor)
    assert lightning_args.build([], "trainer.callbacks") == []


def test_user_callbacks_early_stopping_without_monitor_is_one_line_before_any_rank(tmp_path):
    make_shards(tmp_path / "d", [40])
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", f"--data.train_shards={tmp_path}/d",
                        "--data.val_shards=", "--trainer.callbacks=pytorch_lightning.callbacks.EarlyStopping"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == ExitCode.BAD_INPUT
    assert r.stderr.splitlines() == [
        "ae-train: error: trainer.callbacks: cannot build pytorch_lightning.callbacks.EarlyStopping() with no "
        "arguments: TypeError: EarlyStopping.__init__() missing 1 required positional argument: 'monitor'"]
    assert not list((out / "logs").glob("debug_rank*.log")), "no rank started"
