"""Lightning's own knobs in our config: every Trainer argument, and callbacks and loggers with arguments.

`trainer.<name>` accepts any argument of the installed Lightning's `Trainer` (read from its source,
without importing Lightning, so a typo is one line in well under a second). The few that ae_train
sets itself are either refused with the reason (`OWNED`) or merged with ours (`MERGED`).
Callbacks and loggers are written as Lightning's CLI writes them, a dotted class path or
`{class_path: pkg.Class, init_args: {...}}`, and are built by the launcher before any rank starts.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.util
import inspect
import os
from typing import Any

from .errors import ConfigError

# Trainer arguments ae_train sets: a user value is refused, with what to use instead.
OWNED = {
    "strategy": "ae_train runs DDP itself (its own launcher, torchrun or srun); set trainer.ddp_timeout_s",
    "plugins": "ae_train passes the cluster environment (SLURM, torchrun or its launcher)",
    "default_root_dir": "use output_dir",
    "use_distributed_sampler": "the epoch plan already splits the data between ranks (equal batches)",
    "enable_checkpointing": "ae_train always saves checkpoints/last.ckpt and the best one",
    "barebones": "ae_train's logging callbacks need Lightning's hooks",
}
# Trainer arguments ae_train sets and a user value is merged with: ours and the user's both apply.
MERGED = {
    "callbacks": "yours run before ae_train's own (summary, watchdog, debug lines, checkpoints)",
    "logger": "CSV (metrics/<ts>/metrics.csv) always; yours are added",
}


@functools.lru_cache(maxsize=1)
def trainer_arguments() -> tuple[str, ...]:
    """The keyword arguments of the installed `pytorch_lightning.Trainer.__init__`."""
    spec = importlib.util.find_spec("pytorch_lightning")
    try:
        path = os.path.join(spec.submodule_search_locations[0], "trainer", "trainer.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "Trainer":
                for fn in node.body:
                    if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                        return tuple(a.arg for a in fn.args.args + fn.args.kwonlyargs if a.arg != "self")
    except (OSError, SyntaxError, TypeError, IndexError):
        pass
    import pytorch_lightning as pl  # the slow, sure way

    return tuple(p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self")


def check_trainer_key(name: str, where: str) -> None:
    """A `trainer.<name>` not in our own TrainerConfig: a Lightning argument we pass through, or one line."""
    if name in OWNED:
        raise ConfigError(f"trainer.{name} is set by ae_train ({where}): {OWNED[name]}")
    known = trainer_arguments()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean trainer.{close[0]}?" if close else ""
        raise ConfigError(f"unknown config key 'trainer.{name}' ({where}): not an argument of Lightning's Trainer{hint}")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _load_class(path: str, key: str) -> type:
    module, _, name = path.strip().rpartition(".")
    if not module or not name:
        raise ConfigError(f"{key}: '{path}' is not a dotted path to a class (package.module.Class)")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's import is the user's input error
        raise ConfigError(f"{key}: cannot load '{path}': {_one_line(e)}") from None


def _entry(entry: Any, key: str) -> tuple[str, dict]:
    """(class path, init args) of `pkg.Class` or `{class_path: pkg.Class, init_args: {...}}`."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("class_path"), str) and \
            set(entry) <= {"class_path", "init_args"} and isinstance(entry.get("init_args") or {}, dict):
        return entry["class_path"], dict(entry.get("init_args") or {})
    raise ConfigError(f"{key}: expected a class path or {{class_path: ..., init_args: {{...}}}}, got {entry!r}")


def build(entries: list[Any], key: str, defaults: dict[str, Any] | None = None) -> list[Any]:
    """Objects from `pkg.Class` or `{class_path: pkg.Class, init_args: {...}}` entries; `key` is
    `trainer.callbacks` (each must be a Lightning Callback) or `trainer.logger` (a Lightning Logger).
    `defaults` fill init arguments the class takes and the entry does not set (a logger's save_dir)."""
    if not entries:
        return []
    if key.endswith("callbacks"):
        from pytorch_lightning.callbacks import Callback as expected
        public = "pytorch_lightning.callbacks.Callback"
    else:
        from pytorch_lightning.loggers import Logger as expected
        public = "pytorch_lightning.loggers.Logger"
    out = []
    for entry in entries:
        path, args = _entry(entry, key)
        cls = _load_class(path, key)
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            params = {}
        for name, value in (defaults or {}).items():
            if name in params and name not in args:
                args[name] = value
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items() if k not in (defaults or {}))
        try:
            obj = cls(**args)
        except Exception as e:  # noqa: BLE001 - the class's own check of its arguments: one line naming it
            given = f"({shown})" if shown else "() with no arguments"
            raise ConfigError(f"{key}: cannot build {path}{given}: {_one_line(e)}") from None
        if not isinstance(obj, expected):
            raise ConfigError(f"{key}: {path} is not a Lightning {expected.__name__.lower()} (a subclass of {public})")
        out.append(obj)
    return out


def describe() -> str:
    """For `ae-train config --help`: what passes through and what ae_train owns."""
    ours = {"accelerator", "devices", "num_nodes", "precision", "max_epochs", "gradient_clip_val",
            "enable_progress_bar", "callbacks", "logger"}
    passed = [a for a in trainer_arguments() if a not in OWNED and a not in ours]
    lines = ["Every other argument of Lightning's Trainer is accepted as --trainer.<name>=<value> (YAML value) "
             "and passed through:", "    " + ", ".join(passed), "Set by ae_train (a value is refused):"]
    lines += [f"    trainer.{k}: {v}" for k, v in OWNED.items()]
    lines += ["Merged with ae_train's own:"] + [f"    trainer.{k}: {v}" for k, v in MERGED.items()]
    return "\n".join(lines)
