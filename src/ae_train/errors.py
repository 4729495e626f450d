"""Bad input: the one error type for what the user got wrong, caught where a process ends.

A key, a flag, a file or a shard spec the user wrote that cannot be used raises ConfigError, whose
message is one line naming it; `cli.main` prints it as `ae-train: error: <message>` and exits 2
(ExitCode.BAD_INPUT), with no traceback. The launcher raises it before any rank starts; under
torchrun or srun, rank 0 raises it and hands it to the others (train.py). Standard library only and
nothing of ours: every layer raises it, from the config to the data path and the commands.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: the message is one line that names the key, file or flag."""


# The data path's name for it (a shard spec that names no shard, a sample the model cannot take): the
# same type, so one `except ConfigError` where a process ends catches both.
DataError = ConfigError
