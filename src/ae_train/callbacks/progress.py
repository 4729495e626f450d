"""ConsoleProgressBar: Lightning's tqdm bar on the terminal the run was started from, never in a log.

A rank's stdout and stderr are its debug log (logs.setup_rank_logging), so the stock bar would fill
the log with carriage returns. This one draws on the console stream the logging setup kept (the
terminal before fd 1/2 were redirected), on rank 0 only, and only when that is a terminal.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

from pytorch_lightning.callbacks import TQDMProgressBar
from typing_extensions import override

from .. import logs


def console_is_terminal() -> bool:
    console = logs.console()
    try:
        return console is not None and console.isatty()
    except (OSError, ValueError):
        return False


class ConsoleProgressBar(TQDMProgressBar):
    @contextmanager
    def _on_console(self):
        saved = sys.stdout
        sys.stdout = logs.console()  # Lightning's bars are made with file=sys.stdout
        try:
            yield
        finally:
            sys.stdout = saved

    @override
    def init_sanity_tqdm(self):
        with self._on_console():
            return super().init_sanity_tqdm()

    @override
    def init_train_tqdm(self):
        with self._on_console():
            return super().init_train_tqdm()

    @override
    def init_validation_tqdm(self):
        with self._on_console():
            return super().init_validation_tqdm()

    @override
    def init_predict_tqdm(self):
        with self._on_console():
            return super().init_predict_tqdm()
