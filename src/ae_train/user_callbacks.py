"""trainer.callbacks: the user's Lightning callbacks, built from dotted paths with no arguments.

The launcher builds them once in its checks, so a path that does not import, a class that needs
arguments (`EarlyStopping` without `monitor`) or an object that is no Lightning Callback is one
`ae-train: error:` line before any rank starts, not a traceback inside every rank. Importing
pytorch_lightning costs seconds, so this runs only when callbacks are named.
"""
from __future__ import annotations

import importlib

from .config import ConfigError


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def build(paths: list[str]) -> list:
    """The callbacks named in trainer.callbacks, each built with no arguments."""
    if not paths:
        return []
    from pytorch_lightning.callbacks import Callback

    out = []
    for dotted in paths:
        module, _, name = dotted.strip().rpartition(".")
        if not module or not name:
            raise ConfigError(f"trainer.callbacks: '{dotted}' is not a dotted path to a class (package.module.Class)")
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception as e:  # noqa: BLE001 - any failure of the user's import is the user's input error
            raise ConfigError(f"trainer.callbacks: cannot load '{dotted}': {_one_line(e)}") from None
        try:
            callback = cls()
        except Exception as e:  # noqa: BLE001 - a TypeError for missing arguments, or the class's own check
            raise ConfigError(f"trainer.callbacks: cannot build {dotted}() with no arguments: {_one_line(e)}") from None
        if not isinstance(callback, Callback):
            raise ConfigError(f"trainer.callbacks: {dotted} is not a Lightning callback "
                              "(a subclass of pytorch_lightning.callbacks.Callback)")
        out.append(callback)
    return out
