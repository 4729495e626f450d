"""The log lines in one place: the line format, the markers, each message template and its parsing pattern.

Standard library only: `ae-train diagnose` imports it on a login node where torch would take longer than
the diagnosis. Writers pass a template to logging (`log.info(PROCESSING.template, ...)`: formatting stays
lazy), diagnose parses with the patterns (bytes: a torn UTF-8 sequence cannot stop it), the tests build
their lines from the templates, and tests/test_logformat.py checks that docs/LOG_FORMAT.md shows every
template filled with its example. The contract for users is docs/LOG_FORMAT.md and the logging guide.
"""
from __future__ import annotations

import re
from typing import NamedTuple

# ---- the files, under <output_dir>/logs/ (rundir.RunDir builds their paths, diagnose finds them) ----
TS_FORMAT = "%Y%m%d_%H%M%S"  # <ts>, a run's timestamp (strftime): one per run, shared by all its ranks
TRAIN_LOG = "train_%s.log"  # <ts>
DEBUG_LOG = "debug_rank%s_%s.log"  # global rank (`*` in the glob the console shows), <ts>
LEDGER = "samples_rank%s_%s.tsv"  # global rank, <ts>: the sample ledger (log.sample_ledger)
STARTUP_LOG = "startup_rank%s_%s.log"  # global rank, <ts> its own start: its lines before the run had a timestamp
RUN_FILE = re.compile(r"(?:train|debug_rank(\d+))_(\d{8}_\d{6})\.log")  # TRAIN_LOG, DEBUG_LOG: (rank or None, <ts>)
STARTUP_FILE = re.compile(r"startup_rank(\d+)_(\d{8}_\d{6})\.log")  # STARTUP_LOG: (rank, <ts>)

# ---- the line ----
LINE_FORMAT = "%(asctime)s [%(levelname)s] [%(tag)s] %(message)s"  # logging's default asctime: local time, ,mmm
LAUNCHER_TAG = "Launcher"
RANK_TAG = "Rank %d/%d"
WORKER_PART = " Worker %d/%d"  # a DataLoader worker's tag: its process's tag, then this
WORKER_TAG = RANK_TAG + WORKER_PART
TAG = re.compile(rb"Rank (\d+)/(\d+)(?: Worker (\d+)/(\d+))?")
TIME_LEN = 23  # `YYYY-MM-DD HH:MM:SS,mmm`, then ` [LEVEL] [TAG] message`


class Message(NamedTuple):
    """One kind of line: the writer's printf template, example arguments (as docs/LOG_FORMAT.md shows the
    line), and the pattern diagnose reads it with (bytes). `doc_cut`: the doc shortens the line with
    `...` after this text."""
    template: str
    example: tuple
    pattern: re.Pattern
    doc_cut: str | None = None

    def text(self, *args) -> str:
        """The message filled with args (default: the example), as logging writes it."""
        return self.template % (args or self.example)

    @property
    def head(self) -> bytes:
        """The literal text before the first placeholder: what a line starts with."""
        return self.template.split("%", 1)[0].encode()


# ---- markers (INFO, a rank's main process) ----
MARKER_START = Message("========== %s START ==========", ("EPOCH 0 TRAINING",),
                       re.compile(rb"=+ (?:EPOCH (\d+) )?(SANITY CHECK|TRAINING|VALIDATION) (START|END) =+"))
MARKER_END = Message("========== %s END ========== batches=%d time=%.2fs", ("EPOCH 0 VALIDATION", 3, 0.2),
                     MARKER_START.pattern)
MARKER_PREFIX = b"=========="
MARKER_BATCHES = re.compile(rb"batches=(\d+)")
RESUMED_AT = " resumed at batch %d"  # after a mid-epoch resume, appended to the TRAINING START marker
SANITY = "SANITY CHECK"
TRAINING = "EPOCH %d TRAINING"
VALIDATION = "EPOCH %d VALIDATION"

# ---- a rank's main process ----
HEADER = Message("Debug log of rank %d/%d: host=%s pid=%d local_rank=%d node_rank=%d device=%s run=%s "
                 "python=%s torch=%s lightning=%s",
                 (0, 2, "node1", 1234, 0, 0, "cpu", "20261129_050102", "3.11.7", "2.13.0", "2.6.6"),
                 re.compile(rb"Debug log of rank (\d+)/(\d+): (.*)"))
TRAINING_STEP = Message(
    "Training step %d, loss=%.6f | Processed %d training batches (epoch %d, global step %d), %.0f samples/s, "
    "%s (%s), rss %.0f MB, cuda %.0f MB",
    (500, 0.0987, 501, 0, 1501, 12000, "data wait 3.1%, forward 21.5%, backward 60.2%, optimizer 9.9%, other 5.3%",
     "cpu clock", 812, 0),
    re.compile(rb"Training step (\d+), loss=([^ |,]+)(?: \| Processed (\d+) training batches "
               rb"\(epoch (\d+), global step (\d+)\),? ?(.*))?"))
# The time split inside a progress line and the epoch summary (callbacks/step_split.py).
SPLIT_PART = "%s %.1f%%"
SPLIT_NAMES = ("data wait", "forward", "backward", "optimizer", "other")
SPLIT = re.compile(r"data wait (\d+(?:\.\d+)?)%(?:, forward (\d+(?:\.\d+)?)%, backward (\d+(?:\.\d+)?)%, "
                   r"optimizer (\d+(?:\.\d+)?)%, other (\d+(?:\.\d+)?)%(?: \(([^)]*)\))?)?")
RATE = re.compile(r"(\d+(?:\.\d+)?) samples/s")
VAL_STEP = Message("Validation step %d, loss=%.6f (epoch %d)", (20, 0.105, 0),
                   re.compile(rb"Validation step (\d+), loss=([^ ,]+)(?: \(epoch (\d+)\))?"))
EPOCH_TRAIN = Message("Epoch %d train: loss=%.6f batches=%d time=%.2fs samples/s=%.0f shard_errors=%d%s (all ranks)%s",
                      (0, 0.0123, 15, 1.23, 9756, 0, "", "; time split slowest rank 1: data wait 67.6%, forward 28.1%, "
                       "backward 3.0%, optimizer 1.1%, other 0.2%; fastest rank 0: data wait 3.6%, forward 28.4%, "
                       "backward 66.6%, optimizer 1.1%, other 0.2%"),
                      re.compile(r"Epoch (\d+) train: .*; time split (?:slowest )?rank (\d+): ([^;]*)"
                                 r"(?:; fastest rank (\d+): ([^;]*))?"))
SPLIT_ONE = "; time split rank %d: %s"
SPLIT_TWO = "; time split slowest rank %d: %s; fastest rank %d: %s"
EPOCH_SPLIT_MARK = b"; time split "
EPOCH_VAL = Message("Epoch %d val: loss=%.6f batches=%d shard_errors=%d%s", (0, 0.0105, 3, 0, ""),
                    re.compile(rb"Epoch (\d+) val: "))
NONFINITE_PART = " nonfinite_samples=%d"  # in an epoch summary after shard_errors, when samples were left out
SAVING = Message("Saving checkpoint %s", ("/out/checkpoints/last.ckpt",), re.compile(rb"Saving checkpoint (.*)"))
SAVED = Message("Saved checkpoint %s in %.2fs", ("/out/checkpoints/last.ckpt", 0.05), re.compile(rb"Saved checkpoint "))
LEDGER_AT = Message("Sample ledger: %s", ("/out/logs/samples_rank0_20261129_050102.tsv",),
                    re.compile(rb"Sample ledger: (.*)"))
NOTHING_TO_TRAIN = Message("Nothing to train: the checkpoint is at the end of epoch %d and trainer.max_epochs is %d; "
                           "to train on, pass a larger trainer.max_epochs (e.g. --trainer.max_epochs=%d)",
                           (2, 3, 6), re.compile(rb"Nothing to train: "), doc_cut="to train on, ")
NOTHING_TO_TRAIN_STEPS = Message("Nothing to train: the checkpoint is at step %d and trainer.max_steps is %d; to train "
                                 "on, pass a larger trainer.max_steps (e.g. --trainer.max_steps=%d)", (400, 400, 800),
                                 NOTHING_TO_TRAIN.pattern, doc_cut="to train on, ")
NONFINITE_LOSS = Message("Non-finite loss %s at epoch %d step %d (batch %d of the epoch) on rank %d; its batch: %s; stopping "
                         "every rank, no checkpoint is written from these weights",
                         (float("nan"), 3, 1204, 56, 1, "8 samples from /data/train-000004.tar (5), /data/train-000001.tar"
                          " (3); keys train000004_000001789, ..."),
                         re.compile(rb"Non-finite loss (\S+) at epoch (\d+) step (\d+) \(batch (\d+) of the epoch\) on rank "
                                    rb"(\d+); its batch: (.*?); stopping every rank"), doc_cut="its batch: ")
NONFINITE_ELSEWHERE = Message("Stopping: rank %d had a non-finite loss at step %d (its ERROR line names the batch)", (1, 1204),
                              re.compile(rb"Stopping: rank (\d+) had a non-finite loss at step (\d+)"))
NONFINITE_WEIGHTS = Message("Non-finite weights at epoch %d step %d (the losses were finite); stopping every rank, no "
                            "checkpoint is written from these weights", (3, 1204),
                            re.compile(rb"Non-finite weights at epoch (\d+) step (\d+)"))
FINISHED_RUN = Message("Training finished: %d epochs in %.1fs", (3, 35.2), re.compile(rb"Training finished"))

# ---- hang watchdog and stack dumps ----
HANG = Message("HANG SUSPECTED: no progress for %.0f s in %s (last event: %s)",
               (605, "training (waiting for data)", "batch end of batch 4 in epoch 0 at 2026-11-29 05:01:02"),
               re.compile(rb"HANG SUSPECTED: no progress for (\d+) s in (.*?) \(last event: (.*)\)"))
RESOURCES = Message("Resources at hang: rss %.0f MB, cpu time user %.1f s system %.1f s, cuda %s, worker pids %s",
                    (812, 10.1, 2.0, "n/a", "[1240, 1241]"), re.compile(rb"Resources at hang"))
RESUMED = Message("progress resumed after %.0f s", (700,), re.compile(rb"progress resumed"))
# A rank's process-group set-up (run/procgroup.py): each stage (INFO, debug log), and the phase a HANG line names.
SETUP = Message("Process-group set-up: %s", ("joined rank 0's store at node0:41234 (torchrun restart 1)",),
                re.compile(rb"Process-group set-up: (.*)"))
SETUP_PHASE = "process-group set-up, %s; ranks not yet connected: %s"
SETUP_HANG = Message(HANG.template, (600, SETUP_PHASE % ("init_process_group (gloo): connecting every rank", "3, 5"),
                                     "checked in at the store; connecting 8 ranks (gloo) at 2026-11-29 05:01:02"),
                     HANG.pattern)
# A rank's first line, in its start-up log (or its debug log when the run's timestamp is known at start).
STARTUP = Message("Start-up of rank %d/%d: host=%s pid=%d, started by %s",
                  (1, 2, "node1", 1234, "torchrun (restart 1 of 3, run id 5f1c9a2e)"),
                  re.compile(rb"Start-up of rank (\d+)/(\d+): host=(\S+) pid=(\d+), started by (.*)"))
DUMP = Message("Stack dump of %s (pid %d), reason: %s", ("rank 1", 1234, "hang"),
               re.compile(rb"Stack dump of (.*?)(?: \(pid (\d+)\))?, reason: (.*)"))
# A dump's body, faulthandler's layout: per thread a header, then its frames innermost first.
DUMP_THREAD = "Thread 0x%x (%s) (most recent call first):"
DUMP_FRAME = '  File "%s", line %s in %s'  # %s: a frame's line number may be None
DUMP_SOURCE = "    %s"
DUMP_THREAD_HEADS = (b"Thread 0x", b"Current thread 0x")  # the second: faulthandler's own dumps
DUMP_FRAME_HEAD = b"File "

# ---- DataLoader workers (data/reader.py) ----
WORKER_STARTED = Message("Worker started pid=%d", (4321,), re.compile(rb"Worker started pid=(\d+)"))
PROCESSING = Message("Processing %d/%d files from %s (epoch %d, %d samples, %d batches)",
                     (3, 5, "train_shards", 0, 120, 15),
                     re.compile(rb"Processing (\d+)/(\d+) files from (\S+) \(epoch (\d+), (\d+) samples, (\d+) batches"))
OPENING = Message("Opening shard %s (samples %d..%d of %d)", ("/data/train-000003.tar", 0, 200, 200),
                  re.compile(rb"Opening shard (.*?)(?: \(samples \d+\.\.\d+ of \d+\))?$"))
FINISHED_SHARD = Message("Finished shard %s: %d samples in %.3fs", ("/data/train-000003.tar", 200, 0.052),
                         re.compile(rb"Finished shard (.*): (\d+) samples in "))
SHARD_ERROR = Message("Error reading shard %s: %s; skipped", ("/data/train-000004.tar", "truncated tar: ..."),
                      re.compile(rb"Error reading shard (.+?): (.*)"))
# The split at the end (`..., 0.6s, train_shards)`) beats the tag's guess; older lines end at `errors 0)`.
COMPLETED = Message("COMPLETED iteration, total samples: %d (epoch %d, batches %d, shards %d, errors %d, %.1fs, %s)",
                    (120, 0, 15, 3, 0, 0.6, "train_shards"),
                    re.compile(rb"COMPLETED iteration, total samples: (\d+) \(epoch (\d+), batches (\d+)"
                               rb"(?:[^)]*, ([A-Za-z_]\w*)\))?"))

# A remote read that failed in a way that may pass (data/remote.py): WARNING, then the read goes on.
READ_RETRY = Message("Retrying shard %s (retry %d of %d, data.read_retries) in %.1fs: %s; %s",
                     ("https://host/ae/train-000017.tar.gz", 1, 3, 1.0,
                      "curl exited with code 18: curl: (18) transfer closed with 524288 bytes remaining to read",
                      "resuming at byte 524288 by an HTTP range request"),
                     re.compile(rb"Retrying shard (.+?) \(retry (\d+) of (\d+), data\.read_retries\) in [\d.]+s: (.*)"))
PADDING = Message("%s: worker read %d of %d planned samples; padding %d batch(es) with repeats to keep batch counts "
                  "equal across ranks", ("train_shards", 80, 120, 5),
                  re.compile(rb"(\S+): worker read (\d+) of (\d+) planned samples; padding (\d+) batch"),
                  doc_cut="batch(es) ")
NONFINITE_SAMPLE = Message("Sample %s of shard %s holds NaN or inf; left out (a repeat of %s takes its place)",
                           ("train000004_000001789", "/data/train-000004.tar", "train000004_000001790"),
                           re.compile(rb"Sample (\S+) of shard (.+?) holds NaN or inf; left out"))
RESUME_SKIP = Message("Resuming mid-epoch %d: skipping the %d batch(es) of this worker already trained", (1, 11),
                      re.compile(rb"Resuming mid-epoch (\d+): skipping the (\d+) batch"))
ELASTIC_RESUME = Message("Resuming epoch %d after its batch %d on another world: it was planned for %s, this run has %s; "
                         "its %d samples not yet trained are planned again over this world: %d batches per rank "
                         "(padded %d)", (0, 153, "2 rank(s) x 2 worker(s)", "1 rank(s) x 1 worker(s)", 6592, 824, 0),
                         re.compile(rb"Resuming epoch (\d+) after its batch (\d+) on another world: it was planned for "
                                    rb"(.+?), this run has (.+?); its (\d+) samples not yet trained"),
                         doc_cut="again over this world: ")
RING_WORKER = Message("Batch ring: %d batches handed over, %.3fs waiting for the rank to free a slot", (31, 0.412),
                      re.compile(rb"Batch ring: (\d+) batches handed over, ([\d.]+)s waiting"))

# ---- a rank's main process, about its data (data/datamodule.py, data/reader.py, data/ring.py) ----
SPLIT_SUMMARY = Message("%s: %d shards, %d samples of %s", ("train_shards", 40, 400000, "256 values"),
                        re.compile(rb"(\w+): (\d+) shards, (\d+) samples of (.*)"))
EQUALIZED = Message("Equalized %s for epoch %d: %d ranks x %d batches of %d; dropped %d samples, padded %d",
                    ("train_shards", 0, 2, 15, 8, 3, 0),
                    re.compile(rb"Equalized (\S+) for epoch (\d+): (\d+) ranks x (\d+) batches of (\d+); "
                               rb"dropped (\d+) samples, padded (\d+)"))
RING_MADE = Message("Batch ring for %s: %d workers x %d slots of %d bytes (%.1f MB)%s",
                    ("train_shards", 2, 5, 262144, 2.5, ""), re.compile(rb"Batch ring for (\S+): (\d+) workers x (\d+) slots"))
RING_COPIES = Message("Batch ring: %d batches handed over as copies so far: the training step kept more than %d batches "
                      "of one worker alive", (3, 3), re.compile(rb"Batch ring: (\d+) batches handed over as copies"),
                      doc_cut="so far: ")
RING_PIN_FAILED = Message("Could not pin the batch ring (%d MB): %s; device copies will not overlap",
                          (40, "cudaHostRegister error 1"), re.compile(rb"Could not pin the batch ring \((\d+) MB\): (.*)"))

# ---- data checks before any rank (launcher, or rank 0 under torchrun: data/shards.py, data/splits.py) ----
LISTED = Message("%s: %d shard(s), first %s", ("data.train_shards", 8000, "/data/train-000000.tar"),
                 re.compile(rb"(data\.\w+): (\d+) shard\(s\), first (.*)"))
INDEX_IGNORED = Message("Ignoring unreadable shard index %s: %s", ("/data/ae_index.json", "not JSON: ..."),
                        re.compile(rb"Ignoring unreadable shard index (.+?): (.*)"))
COUNTING = Message("%s: counting samples in %d shard(s)", ("data.train_shards", 12),
                   re.compile(rb"(data\.\w+): counting samples in (\d+) shard"))
COUNT_PROGRESS = Message("%s: counted %d/%d shards (%.0f s); reading %s", ("data.train_shards", 7, 12, 5, "<url>"),
                         re.compile(rb"(data\.\w+): counted (\d+)/(\d+) shards \((\d+) s\); reading (.*)"))
COUNTED = Message("%s: counted %d of %d shards by %s in %.1fs (not in %s; `ae-train index` saves this)",
                  ("data.train_shards", 12, 8000, "reading them", 6.1, "ae_index.json"),
                  re.compile(rb"(data\.\w+): counted (\d+) of (\d+) shards by (.+?) in ([\d.]+)s"),
                  doc_cut="ae_index.json; ")
PROBING = Message("%s: checking the first sample", ("data.train_shards",),
                  re.compile(rb"(data\.\w+): checking the first sample"))
NO_FIRST_SAMPLE = Message("%s: no first sample from %s: %s", ("data.train_shards", "<url>", "empty tar"),
                          re.compile(rb"(data\.\w+): no first sample from (.+?): (.*)"))
PROBED = Message("%s: %d samples; each '%s' holds %s (from %s)",
                 ("data.train_shards", 8000000, "png", "784 values (1x28x28)", "<url>"),
                 re.compile(rb"(data\.\w+): (\d+) samples; each '(.+?)' holds (.*) \(from (.*)\)"))

# ---- the launcher (train log, tag `Launcher`) ----
CHECKING = Message("Checking the data of run %s before starting ranks", ("20261129_050102",),
                   re.compile(rb"Checking the data of run (\S+)"))
COUNT_STALLED = Message("Error counting shard %s: stalled for %.0f s; left out of the run", ("<url>", 300),
                        re.compile(rb"Error counting shard (.+?): (.*)"))
STARTING = Message("Starting training: %d rank(s) on %d node(s), %s, run %s", (2, 1, "cpu", "20261129_050102"),
                   re.compile(rb"Starting training"))
EXITED = Message("Rank %d (pid %d) exited with %s; stopping the other ranks", (1, 1234, "code -9 (killed by SIGKILL)"),
                 re.compile(rb"Rank (\d+) \(pid (\d+)\) exited with code (-?\d+)(.*)"))
RECEIVED = Message("Received %s; asking %d rank(s) to save last.ckpt and stop (a second signal kills them)",
                   ("SIGTERM", 2), re.compile(rb"Received (\S+?);"), doc_cut="and stop ")



def marker_start(what: str) -> str:
    """`========== EPOCH 0 TRAINING START ==========` for what = `EPOCH 0 TRAINING` (or SANITY CHECK)."""
    return MARKER_START.template % what


def format_split(shares: list[float]) -> str:
    """`data wait 3.1%, forward 20.0%, ...` from the parts' percentages, in SPLIT_NAMES order."""
    return ", ".join(SPLIT_PART % (name, s) for name, s in zip(SPLIT_NAMES, shares))


# --- launcher, rank start-up, checkpoints, preemption ---
# Where the logs are (console, then the train log): the launcher, or rank 0 when torchrun/srun started it.
LOGS_AT = Message("Logs: %s and %s", ("/out/logs/train_20261129_050102.log", "/out/logs/debug_rank*_20261129_050102.log"),
                  re.compile(rb"Logs: (\S+) and (\S+)"))
MONITOR = Message("Monitor logs with: tail -f %s", ("/out/logs/train_20261129_050102.log",),
                  re.compile(rb"Monitor logs with: tail -f (\S+)"))
CONFIG = Message("Config:\n%s", ("seed: 0",), re.compile(rb"Config:\n"), doc_cut="Config:")  # then the YAML
CONFIG_LEFT = Message("Left %s as it is (not written by ae-train); this run's config is config_%s.yaml",
                      ("/out/config.yaml", "20261129_050102"), re.compile(rb"Left (.+) as it is \(not written by ae-train\)"))
COUNTS_SAVED = Message("Saved the sample counts of %d shard(s) to %s", (12, "/out/shard_counts.json"),
                       re.compile(rb"Saved the sample counts of (\d+) shard\(s\) to (.*)"))
LEFTOVER_REMOVED = Message("Removed %s, left by a checkpoint save that did not finish",
                           ("/out/checkpoints/last.ckpt.tmp4242",),
                           re.compile(rb"Removed (.+), left by a checkpoint save that did not finish"))
LEFTOVER_KEPT = Message("Could not remove %s, left by an unfinished checkpoint save: %s",
                        ("/out/checkpoints/last.ckpt.tmp4242", "Permission denied"),
                        re.compile(rb"Could not remove (.+), left by an unfinished checkpoint save: (.*)"))
LAUNCHER_HANG = Message("HANG SUSPECTED: no progress for %d s in launcher checks (last event: %s%s)",
                        (600, "<last line>", "; reading <url> for 600 s"), HANG.pattern)
NODE_STARTING = Message("Node %d: starting ranks %d-%d; node 0 (%s) names the run", (1, 8, 15, "10.0.0.1"),
                        re.compile(rb"Node (\d+): starting ranks (\d+)-(\d+)"))
NODE_WRITES = Message("Node %d (%s) writes ranks %d-%d to %s", (1, "host", 8, 15, "/out/logs/debug_rank*_<ts>.log"),
                      re.compile(rb"Node (\d+) \((.*?)\) writes ranks (\d+)-(\d+) to (.*)"))
RANK_STOPPED = Message("Rank %d stopped the run (exit code %d: %s)", (0, 4, "a checkpoint could not be written"),
                       re.compile(rb"Rank (\d+) stopped the run \(exit code (\d+): (.*)\)"))
NOT_STOPPED_AFTER_OTHERS = Message("Ranks did not stop within 30 s of the others; killing them", (),
                                   re.compile(rb"Ranks did not stop within 30 s of the others"))
NOT_STOPPED_AFTER_SIGNAL = Message("Ranks did not stop %s; killing them", ("after a second signal",),
                                   re.compile(rb"Ranks did not stop (.*); killing them"))
STOPPED_BY = Message("Stopped by %s; continue with --resume=auto", ("SIGTERM",), re.compile(rb"Stopped by (\S+);"))
ALL_FINISHED = Message("All %d rank(s) finished", (2,), re.compile(rb"All (\d+) rank\(s\) finished"))
# A rank's main process.
MLP_ON_IMAGES = Message("model.arch=mlp on %s images: each is flattened to %d values (pixels scaled to [0, 1])",
                        ("1x28x28", 784), re.compile(rb"model\.arch=mlp on (\S+) images"))
RECONSTRUCTIONS = Message("Reconstructions of epoch %d: %s (%d validation inputs%s; %.0f ms)",
                          (3, "output/ae_demo/reconstructions/epoch_003.png", 8, ", val_psnr 24.31 dB", 4),
                          re.compile(rb"Reconstructions of epoch (\d+): (.+) \((\d+) validation inputs"))
RECONSTRUCTIONS_FAILED = Message("Reconstructions of epoch %d not written: %s (training goes on)",
                                 (3, "OSError: [Errno 28] No space left on device"),
                                 re.compile(rb"Reconstructions of epoch (\d+) not written: (.*) \(training"))
STOPPING = Message("Stopping: %s", ("5 of 40 shards of train_shards could not be read in epoch 0, over the limit of 4 "
                                    "(data.max_shard_errors=0.1); see the ERROR lines naming each shard",),
                   re.compile(rb"Stopping: (.*)"), doc_cut="in epoch 0, ")
# TooManyShardErrors' text, logged after `Stopping: `.
SHARD_LIMIT = ("%d of %d shards of %s could not be read in epoch %d, over the limit of %d (data.max_shard_errors=%g); "
               "see the ERROR lines naming each shard")
SHARD_LIMIT_STOP = re.compile(rb"Stopping: ((\d+) of (\d+) shards of (\S+) could not be read in epoch (\d+), over the "
                              rb"limit of \d+ \([^)]*\))")
SHARD_ERRORS_EPOCH = Message("Epoch %d %s: %d of %d shards of %s could not be read (limit %d, data.max_shard_errors=%g)",
                             (0, "train", 2, 40, "train_shards", 4, 0.1),
                             re.compile(rb"Epoch (\d+) (train|val): (\d+) of (\d+) shards of (\S+) could not be read"))
# Rank 0's own note of the failed write (INFO, debug log); every rank then stops on CKPT_WRITE_FAILED.
CKPT_NOT_WRITTEN = Message("Could not write checkpoint %s: %s", ("/out/checkpoints/last.ckpt", "No space left on device"),
                           re.compile(rb"Could not write checkpoint (.+?): (.*)"))
CKPT_WRITE_FAILED = Message("Stopping: could not write checkpoint %s; the checkpoints saved before are kept "
                            "(continue with --resume=auto once there is room)",
                            ("/out/checkpoints/last.ckpt: No space left on device",),
                            re.compile(rb"Stopping: could not write checkpoint (.*); the checkpoints saved before"))
STEP_SAVED = Message("Saved step checkpoint %s at epoch %d step %d (batch %d of the epoch) in %.2fs",
                     ("/out/checkpoints/last.ckpt", 1, 425, 176, 0.02),
                     re.compile(rb"Saved step checkpoint (.+) at epoch (\d+) step (\d+) \(batch (\d+) of the epoch\)"))
# Preemption (every rank).
RESUMING = Message("Resuming from %s at epoch %d, step %d", ("/out/checkpoints/last.ckpt", 1, 97),
                   re.compile(rb"Resuming from (.+) at epoch (\d+), step (\d+)"))
PREEMPT_SAVED = Message("Received %s at epoch %d step %d; saved %s", ("SIGTERM", 1, 97, "/out/checkpoints/last.ckpt"),
                        re.compile(rb"Received (\S+) at epoch (\d+) step (\d+); saved (.*)"))
PREEMPT_NOT_SAVED = Message("Received %s at epoch %d step %d; could not save %s (the previous one is kept)",
                            ("SIGTERM", 1, 97, "/out/checkpoints/last.ckpt: No space left on device"),
                            re.compile(rb"Received (\S+) at epoch (\d+) step (\d+); could not save (.*) \(the previous"))
# `ae-train encode` (its launcher's train log, each rank's debug log; the shard lines are the reader's).
ENCODING = Message("Encoding %d shard(s) with %s on %d rank(s), run %s", (4, "/out/checkpoints/last.ckpt", 2,
                                                                           "20261129_050102"),
                   re.compile(rb"Encoding (\d+) shard\(s\) with (.+) on (\d+) rank\(s\), run (\S+)"))
ENCODE_PROCESSING = Message("Processing %d/%d files from %s (%s, device %s)",
                            (2, 4, "encode_shards", "/out/checkpoints/last.ckpt", "cpu"),
                            re.compile(rb"Processing (\d+)/(\d+) files from (\S+) \((.*), device (\S+)\)"))
ENCODE_OPENING = Message("Opening shard %s", ("/data/train-000003.tar",), OPENING.pattern)
ENCODE_COMPLETED = Message("COMPLETED iteration, total samples: %d (shards %d, errors %d, %.1fs, %s)",
                           (400, 2, 0, 1.5, "encode_shards"),
                           re.compile(rb"COMPLETED iteration, total samples: (\d+) \(shards (\d+), errors (\d+)"))
ENCODED = Message("Encoded %d of %d shard(s) into %s", (4, 4, "/out/latents"),
                  re.compile(rb"Encoded (\d+) of (\d+) shard\(s\) into (.*)"))

# Run lock, resume choice, a lost launcher, an uncaught exception (run/runlock.py, checkpoint_files.py, run/orphans.py,
# logs.py).
RUNLOCK_TAKEN = Message("Took over the run lock of output_dir %s from launcher pid %s on host %s (started %s): that run "
                        "is no longer running", ("/out", 81200, "h", "2026-11-29 14:30:25"),
                        re.compile(rb"Took over the run lock of output_dir (.+) from launcher pid (\S+) on host (\S+)"))
RESUME_FALLBACK = Message("resume=auto: %s; resuming from the newest good checkpoint %s instead",
                          ("last.ckpt is truncated or corrupt (...)", "/out/checkpoints/best-epoch=002.ckpt"),
                          re.compile(rb"resume=auto: (.*); resuming from the newest good checkpoint (.+) instead"))
PARENT_GONE = Message("The process that started this rank (pid %d) is gone; stopping: last.ckpt is saved at the next "
                      "step if this rank gets there within %.0f s, else it is killed with its DataLoader workers",
                      (81200, 30), re.compile(rb"The process that started this rank \(pid (\d+)\) is gone"),
                      doc_cut="stopping: ")
PARENT_KILL = Message("Not stopped within %.0f s of losing pid %d (blocked, see the last lines above); killing this "
                      "rank and %d process(es) below it", (30, 81200, 2),
                      re.compile(rb"Not stopped within (\d+) s of losing pid (\d+)"))
UNCAUGHT = Message("Uncaught exception%s: %s: %s", ("", "RuntimeError", "injected failure on rank 1"),
                   re.compile(rb"Uncaught exception(?: in thread (.+?))?: (\w+): (.*)"))
INTERRUPTED = Message("Interrupted (KeyboardInterrupt)", (), re.compile(rb"Interrupted \(KeyboardInterrupt\)"))

MESSAGES = {name: m for name, m in globals().items() if isinstance(m, Message)}
