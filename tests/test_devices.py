"""devices.resolve_devices: `auto` resolved against the machine; a CPU run's launcher never imports torch
(importing it cost ~1 s before any rank could start; see docs/BENCHMARKS.md "Start and end of a run")."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("flags,expected", [(["--trainer.accelerator=cpu", "--trainer.devices=auto"], "cpu 2"),
                                            (["--trainer.accelerator=cpu", "--trainer.devices=3"], "cpu 3")])
def test_devices_cpu_resolves_without_importing_torch(flags, expected):
    script = textwrap.dedent(f"""
        import sys
        from ae_train.config import load_config
        from ae_train.run.devices import resolve_devices
        cfg = load_config(None, {flags!r})
        resolve_devices(cfg)
        print(cfg.trainer.accelerator, cfg.trainer.devices, "torch" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [*expected.split(), "False"]


def test_devices_gpu_asked_for_and_not_visible_is_a_config_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count():
        pytest.skip("a GPU is visible here")
    from ae_train.config import ConfigError, load_config
    from ae_train.run.devices import resolve_devices
    with pytest.raises(ConfigError, match="trainer.accelerator: gpu requested but no CUDA device is visible"):
        resolve_devices(load_config(None, ["--trainer.accelerator=gpu"]))
