"""Lightning's own knobs: any Trainer argument as trainer.*, callbacks and loggers with arguments,
both flag forms, a config that round-trips, and a progress bar only on a terminal."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ae_train.config import ConfigError, load_config
from ae_train.exitcodes import ExitCode
from conftest import ROOT, fit, make_shards


def ae_train(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ae_train", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_lightning_args_pass_through_are_checked_and_both_flag_forms_work():
    cfg = load_config(None, ["--trainer.max_steps", "40", "--trainer.accumulate_grad_batches=2",
                             "--trainer.max_epochs", "3", "--trainer.val_check_interval=0.5"])
    assert cfg.trainer.extra == {"max_steps": 40, "accumulate_grad_batches": 2, "val_check_interval": 0.5}
    assert cfg.trainer.max_epochs == 3
    with pytest.raises(ConfigError, match=r"'trainer.max_step' .* did you mean trainer.max_steps\?"):
        load_config(None, ["--trainer.max_step=40"])
    with pytest.raises(ConfigError, match="trainer.strategy is set by ae_train"):
        load_config(None, ["--trainer.strategy=ddp_spawn"])
    with pytest.raises(ConfigError, match="--trainer.max_epochs needs a value"):
        load_config(None, ["--trainer.max_epochs"])


def test_lightning_args_config_output_round_trips(tmp_path):
    first = tmp_path / "c.yaml"
    first.write_text("trainer:\n  max_steps: 40\n  callbacks:\n  - class_path: pytorch_lightning.callbacks.EarlyStopping\n"
                     "    init_args: {monitor: val_loss, patience: 3}\nmodel:\n  latent_dim: 5\n")
    r = ae_train("config", "--config", str(first), "--seed", "7", "--trainer.gradient_clip_val=0.5")
    assert r.returncode == 0, r.stderr
    (tmp_path / "resolved.yaml").write_text(r.stdout)
    again = ae_train("config", "--config", str(tmp_path / "resolved.yaml"))
    assert again.returncode == 0 and again.stdout == r.stdout, again.stderr
    assert "max_steps: 40" in r.stdout and "seed: 7" in r.stdout and "monitor: val_loss" in r.stdout


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("largs")
    make_shards(d, [400, 400])
    make_shards(d, [64], prefix="val", seed=1)
    return d


def test_lightning_args_max_steps_and_accumulation_reach_both_ranks(shards, tmp_path):
    run = fit(tmp_path / "out", f"--data.train_shards={shards}/train-{{000000..000001}}.tar",
              f"--data.val_shards={shards}/val-000000.tar", "--data.batch_size=8", "--data.num_workers=1",
              "--trainer.max_epochs=3", "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps=40")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    assert "accumulate_grad_batches: 2" in (run.out / "config.yaml").read_text()
    assert "`Trainer.fit` stopped: `max_steps=40` reached." in run.text("train_*.log")
    # 50 batches per epoch and rank, 2 per optimizer step: 25 steps in epoch 0, 15 more (30 batches) in epoch 1
    for r in (0, 1):
        ends = re.findall(r"EPOCH (\d) TRAINING END ========== batches=(\d+)", run.text(f"debug_rank{r}_*.log"))
        assert ends == [("0", "50"), ("1", "30")], (r, ends)


def test_lightning_args_early_stopping_from_yaml_and_a_bad_one(shards, tmp_path):
    cfg = tmp_path / "es.yaml"
    cfg.write_text("trainer:\n  callbacks:\n  - class_path: pytorch_lightning.callbacks.EarlyStopping\n"
                   "    init_args: {monitor: val_loss, patience: 1, min_delta: 100.0}\n"
                   "  logger:\n  - class_path: pytorch_lightning.loggers.CSVLogger\n    init_args: {name: extra_csv}\n")
    run = fit(tmp_path / "out", "--config", str(cfg), f"--data.train_shards={shards}/train-000000.tar",
              f"--data.val_shards={shards}/val-000000.tar", "--data.batch_size=8", "--data.num_workers=1",
              "--trainer.max_epochs=6")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    epochs = re.findall(r"Epoch (\d+) train:", run.text("train_*.log"))
    assert epochs == ["0", "1"], epochs  # no improvement by 100 after epoch 0: stops after patience 1
    assert list((run.out / "extra_csv").rglob("metrics.csv")), "the second logger, save_dir = output_dir"
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  callbacks:\n  - class_path: pytorch_lightning.callbacks.EarlyStopping\n"
                   "    init_args: {patience: 1}\n")
    r = ae_train("fit", "--config", str(bad), f"--output_dir={tmp_path}/out2", f"--data.train_shards={shards}",
                 "--data.val_shards=")
    assert r.returncode == ExitCode.BAD_INPUT, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    # Checks that outlast launchwatch.CONSOLE_AFTER_S (a machine busy with other tests) show their progress first.
    lines = [ln for ln in lines if not re.match(r"\S+ \S+ \[INFO\] \[Launcher\] ", ln)]
    assert len(lines) == 1 and lines[0].startswith("ae-train: error: trainer.callbacks: cannot build "
                                                   "pytorch_lightning.callbacks.EarlyStopping(patience=1): TypeError:"), lines
    assert "monitor" in lines[0] and not list((tmp_path / "out2").rglob("debug_rank*.log"))


@pytest.mark.parametrize("terminal,stty", [(True, ""), (True, " tostop"), (False, "")])
def test_lightning_args_progress_bar_only_on_a_terminal(shards, tmp_path, terminal, stty):
    """tostop: the ranks are background jobs of the terminal; they must not be stopped by writing to it."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", "--trainer.accelerator=cpu",
           "--trainer.devices=2", f"--data.train_shards={shards}/train-000000.tar", "--data.val_shards=",
           "--data.batch_size=8", "--data.num_workers=1", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=true",
           "--log.hang_timeout_s=60"]  # a hang leaves the ranks' stacks in their logs before the timeout below
    if terminal:  # `script` gives the run a pseudo-terminal as its console (of 120 columns: tqdm reads the size)
        import shlex
        cmd = ["script", "-qec", f"stty cols 120 rows 40{stty}; " + " ".join(map(shlex.quote, cmd)), "/dev/null"]
    try:
        r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, text=True, timeout=180, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung; its logs end with:\n" + "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-40:]) for p in sorted((out / "logs").glob("*.log"))))
    assert r.returncode == 0, r.stdout + r.stderr
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "it/s]" not in logs and "\r" not in logs  # never in the log files
    assert ("Epoch 0: 100%" in r.stdout) == terminal, r.stdout[-2000:]


@pytest.mark.parametrize("package,entry,made", [  # each tested for real where its package is installed
    ("tensorboard", "{class_path: pytorch_lightning.loggers.TensorBoardLogger, init_args: {name: tb}}", "tb/**/events.out.tfevents.*"),
    ("wandb", "{class_path: pytorch_lightning.loggers.WandbLogger, init_args: {offline: true, project: ae}}", "wandb/offline-run-*"),
    ("mlflow", "{class_path: pytorch_lightning.loggers.MLFlowLogger, init_args: {tracking_uri: 'file:TMP/mlruns'}}",
     "mlruns/*/*/metrics/val_loss"),
])
def test_lightning_args_third_party_loggers_when_installed(shards, tmp_path, package, entry, made):
    pytest.importorskip(package)
    run = fit(tmp_path / "out", f"--trainer.logger={entry.replace('TMP', str(tmp_path / 'out'))}", f"--data.train_shards={shards}/train-000000.tar",
              f"--data.val_shards={shards}/val-000000.tar", "--data.batch_size=8", "--data.num_workers=1",
              "--trainer.max_epochs=1", env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "out")})
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    assert list((tmp_path / "out").glob(made)), sorted(p.name for p in (tmp_path / "out").rglob("*"))[:50]
