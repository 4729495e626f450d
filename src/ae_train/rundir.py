"""RunDir: where a run keeps its files under `output_dir`, and the start-up steps that write them.

    <output_dir>/
      logs/train_<ts>.log, logs/debug_rank<N>_<ts>.log   one <ts> per run (logs.py writes them)
      logs/samples_rank<N>_<ts>.tsv                       the sample ledger (log.sample_ledger)
      logs/startup_rank<N>_<ts>.log                       a rank's lines before the run has a <ts> (torchrun, srun)
      logs/.shard_counts_<ts>.json                        the launcher's data facts for its ranks (run's life)
      checkpoints/last.ckpt, checkpoints/best-*.ckpt      LastCheckpoint (+ preemption), ModelCheckpoint
      metrics/<ts>/metrics.csv                            CSVLogger (tensorboard/<ts>/ when installed)
      reconstructions/epoch_<NNN>.png                     validation inputs and their reconstructions (rank 0)
      config.yaml, config_<ts>.yaml                       the resolved config: latest run, each run
      shard_counts.json                                   sample counts read from shards, reused next run
      .ae_train.lock                                      one run per output_dir (run/runlock.py)

Every path is built here (the log files' names from logformat's templates, which diagnose reads them
with), and a run's timestamp is chosen here. The launcher and a rank started without it (torchrun,
srun) go through the same steps: `prepare()` (logs/ exists and is writable) and `write_config()`.
Standard library only: `collect` and `diagnose` read a run directory on a login node.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import logformat as lf
from .atomic import atomic_write
from .errors import ConfigError

log = logging.getLogger(__name__)
CONFIG_MARK = "# written by ae-train: the resolved config of the latest run\n"  # config.yaml is ours to update
METRICS = "metrics"          # CSVLogger's name: metrics/<ts>/metrics.csv
TENSORBOARD = "tensorboard"  # TensorBoardLogger's name: tensorboard/<ts>/
LAST_CKPT = "last.ckpt"  # the newest state: LastCheckpoint (epoch ends, every N steps) and preemption write it


@dataclass(frozen=True)
class RunDir:
    root: Path
    given: str = field(default="", compare=False)  # output_dir as the user wrote it, for messages
    logs_dir: Path | None = field(default=None, compare=False)  # of_logs: the logs directory as given

    @classmethod
    def of(cls, cfg) -> RunDir:
        """The run directory of a config (config.Config: its output_dir)."""
        return cls(Path(cfg.output_dir), cfg.output_dir)

    @classmethod
    def of_logs(cls, logs_dir: str | Path) -> RunDir:
        """The run directory whose logs/ is `logs_dir` (diagnose and collect are given the logs; the
        logging setup is given the directory to write them in, whatever its name)."""
        return cls(Path(logs_dir).parent, logs_dir=Path(logs_dir))

    # ---- logs ----
    @property
    def logs(self) -> Path:
        return self.logs_dir or self.root / "logs"

    def train_log(self, ts: str) -> Path:
        return self.logs / (lf.TRAIN_LOG % ts)

    def debug_log(self, rank: int, ts: str) -> Path:
        return self.logs / (lf.DEBUG_LOG % (rank, ts))

    def ledger(self, rank: int, ts: str) -> Path:
        """Rank `rank`'s sample ledger of run `ts` (log.sample_ledger)."""
        return self.logs / (lf.LEDGER % (rank, ts))

    def debug_logs(self, ts: str) -> Path:
        """Every rank's debug log of run `ts`, as the glob the console shows."""
        return self.logs / (lf.DEBUG_LOG % ("*", ts))

    def new_timestamp(self) -> str:
        """A new run's <ts>: now, moved forward a second while a run with that stamp already has logs
        here (start-up logs are the ranks' own, not a run's)."""
        t = time.time()
        while True:
            ts = time.strftime(lf.TS_FORMAT, time.localtime(t))
            if not any(p for p in self.logs.glob(f"*_{ts}.log") if not lf.STARTUP_FILE.fullmatch(p.name)):
                return ts
            t += 1

    def new_startup_log(self, rank: int) -> Path:
        """`startup_rank<N>_<ts>.log`, <ts> now (a second later while that name is taken: a quick restart)."""
        t = time.time()
        while True:
            path = self.logs / (lf.STARTUP_LOG % (rank, time.strftime(lf.TS_FORMAT, time.localtime(t))))
            if not path.exists():
                return path
            t += 1

    def launch_counts(self, ts: str) -> Path:
        """The launcher's data facts (counts, first samples) for its ranks; removed when the run ends."""
        return self.logs / f".shard_counts_{ts}.json"

    # ---- checkpoints, metrics ----
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / LAST_CKPT

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    def metrics_csv(self, ts: str) -> Path:
        return self.metrics / ts / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files, tensorboard/<ts>/ (when it is installed and no logger was named)."""
        return self.root / TENSORBOARD

    @property
    def reconstructions(self) -> Path:
        """Pictures of validation inputs and their reconstructions, one per validation (callbacks/reconstructions.py)."""
        return self.root / "reconstructions"

    # ---- configs, lock, counts ----
    @property
    def config(self) -> Path:
        """The resolved config of the latest run (a config.yaml the user put there is left alone)."""
        return self.root / "config.yaml"

    def run_config(self, ts: str) -> Path:
        return self.root / f"config_{ts}.yaml"

    def configs(self) -> list[Path]:
        """config.yaml and every run's config_<ts>.yaml present."""
        return sorted(self.root.glob("config*.yaml"))

    @property
    def lock(self) -> Path:
        return self.root / ".ae_train.lock"

    @property
    def counts_cache(self) -> Path:
        """Sample counts this output_dir's launchers made by reading shards: the next run reuses them."""
        return self.root / "shard_counts.json"

    def bundle(self, ts: str) -> Path:
        """`ae-train collect`'s default archive of run `ts`."""
        return self.root / f"ae_diag_{ts}.tar.gz"

    # ---- start-up steps (launcher, and a rank that no launcher started) ----
    def prepare(self) -> Path:
        """Create logs/ and prove it writable; ConfigError (one line) when it is not. Returns logs/."""
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            probe = self.logs / f".write_test_{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"output_dir {self.given or self.root} is not writable: {e.strerror or e}") from None
        return self.logs

    def write_config(self, resolved_yaml: str, ts: str) -> None:
        """config_<ts>.yaml, and config.yaml unless the user's own file is there (`resolved_yaml`: config.to_yaml)."""
        text = CONFIG_MARK + resolved_yaml
        self.run_config(ts).write_text(text)
        latest = self.config
        if not latest.exists() or latest.read_text().startswith(CONFIG_MARK):
            latest.write_text(text)
        else:
            log.warning(lf.CONFIG_LEFT.template, latest, ts)

    def load_counts(self) -> dict:
        """The counts cache ({} when absent or unreadable: counting again is only slower)."""
        try:
            return json.loads(self.counts_cache.read_text()) if self.counts_cache.is_file() else {}
        except (OSError, ValueError):
            return {}

    def save_counts(self, known: dict) -> None:
        """Replace the counts cache atomically (a second launcher never reads half a file)."""
        with atomic_write(self.counts_cache) as f:
            f.write(json.dumps(known, indent=1).encode())
