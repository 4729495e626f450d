"""Root cause first (diagnose/failures.py, diagnose/rootcause.py): the verdict leads with the first failure in
time across ranks and workers, and lists what followed as consequences. Logs written through the writers'
own templates and the real excepthook (logs.log_uncaught); the real failing runs are in test_faults.py and
test_checkpoints.py."""
from __future__ import annotations

import json
import signal

import pytest

from ae_train import logformat as lf
from ae_train.diagnose import diagnose_run, format_report, main
from ae_train.logs import log_uncaught
from helpers import NOW, RankWriter, finished_run, kinds, train_log

# Texts of torch and gloo (not ours), as they write them.
GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
               "[127.0.0.1]:51920. This is typically caused by a remote worker crashing. Check the logs of the remote "
               "worker before reporting an error.")
NCCL_WATCHDOG = ("[rank0]:[E1207 15:17:40.593 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation "
                 "timeout: WorkNCCL(SeqNum=812, OpType=ALLREDUCE, Timeout(ms)=1800000) ran for 1800045 milliseconds")


def worker_killed(pid: int, sig: signal.Signals = signal.SIGKILL) -> str:
    """torch's DataLoader, for a worker that died of a signal (strsignal's words)."""
    return f"DataLoader worker (pid {pid}) is killed by signal: {signal.strsignal(sig)}. "


def uncaught(rl: RankWriter, exc: BaseException, thread: str | None = None, dt: float = 1.0) -> None:
    """An exception nobody caught, raised here, as the rank's excepthook logs it: its line and traceback."""
    try:
        raise exc
    except BaseException as e:
        rl.through(log_uncaught, type(e), e, e.__traceback__, thread, dt=dt)


def _first_lines(logs) -> tuple[dict, list[str]]:
    rep = diagnose_run(logs, now=NOW)
    verdict = format_report(rep).split("Verdict:\n", 1)[1].splitlines()
    assert verdict[0] == "!! " + rep["verdict"]  # the text and the JSON lead with the same line
    return rep, verdict


def _crash_then_peer(logs, peer_first: bool):
    """Rank 1 raises in epoch 0; rank 0 loses its connection (before or after, by the clock); the launcher says
    rank 1 exited."""
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    t = max(rl.t for rl in rls)
    rls[1].t, rls[0].t = (t + 0.5, t) if peer_first else (t, t + 0.5)
    uncaught(rls[1], ValueError("bad value in the loss"), dt=0.25)
    uncaught(rls[0], RuntimeError(GLOO_CLOSED), dt=0.25)
    train_log(logs, [(t + 3, "ERROR", lf.LAUNCHER_TAG, lf.EXITED, 1, 1001, "code 1")])
    return rls


@pytest.mark.parametrize("peer_first", [False, True])
def test_rootcause_rank_exception_leads_not_the_peer_or_the_launcher(logs, peer_first):
    _crash_then_peer(logs, peer_first)
    rep, verdict = _first_lines(logs)
    assert rep["state"] == "stopped" and kinds(rep)[0] == "failure" and rep["findings"][0]["ranks"] == [1]
    assert verdict[0].startswith("!! First failure: rank 1 raised ValueError: bad value in the loss (at ")
    assert "training of epoch 0; last progress line: batch 6, global step 7; debug_rank1_" in verdict[0]
    assert verdict[1].strip().startswith("raised at ") and verdict[1].endswith(" in uncaught")  # the raising frame
    assert "usual cause: an error in what this rank runs" in verdict[2]
    after = verdict[verdict.index("    what followed from it (consequences, not the cause):") + 1:]
    assert "rank 0 lost its connection to another rank: RuntimeError: [/__w/" in after[0]
    assert "launcher: Rank 1 (pid 1001) exited with code 1; stopping the other ranks" in after[1]
    failure = rep["failure"]
    assert failure["first"]["kind"] == "exception" and failure["first"]["rank"] == 1
    assert [c["kind"] for c in failure["consequences"]] == ["lost_peer", "rank_exit"]
    assert [c["role"] for c in failure["consequences"]] == ["peer", "after"]
    assert "errors" not in kinds(rep)  # the ERROR lines are all in the failure finding


def test_rootcause_first_in_time_across_ranks_and_workers(logs):
    """Rank 0's CUDA OOM is logged first in file order and rank; rank 1 worker 1 died 300 ms earlier."""
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False, finish_last=False)
    t = max(rl.t for rl in rls) + 5
    rls[0].t, rls[1].t = t + 0.3, t
    uncaught(rls[0], RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), dt=0)
    uncaught(rls[1], RuntimeError(worker_killed(20101)), dt=0)  # rank 1's worker 1 started with pid 20101
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 1 worker 1 (pid 20101) died: killed by SIGKILL (at ")
    assert "reading shard /data/train-0100007.tar" in verdict[0]  # the shard worker 1 had open
    assert "OOM killer" in verdict[1] and "dmesg" in verdict[1] and "data.num_workers" in verdict[1]
    oom = next(c for c in rep["failure"]["consequences"] if c["rank"] == 0)
    assert oom["role"] == "own" and "GPU ran out of memory: lower data.batch_size" in oom["cause"]
    first = rep["failure"]["first"]
    assert (first["kind"], first["worker"], first["pid"], first["signal"]) == ("worker_died", 1, 20101, "SIGKILL")


@pytest.mark.parametrize("message,signal_name,cause", [
    (worker_killed(20001, signal.SIGBUS), "SIGBUS", "shared memory ran out"),
    ("DataLoader worker (pid(s) 20001) exited unexpectedly", None, "OOM killer"),  # the batch ring's own check
])
def test_rootcause_worker_death_kinds(logs, message, signal_name, cause):
    rl = RankWriter(logs, 0, 1)
    rl.train(0, end=False, finish_last=False)
    uncaught(rl, RuntimeError(message))
    first = diagnose_run(logs, now=NOW)["failure"]["first"]
    assert (first["kind"], first["worker"], first["signal"]) == ("worker_died", 1, signal_name)
    assert cause in first["cause"]


def test_rootcause_worker_exception_names_the_worker_and_its_own_traceback(logs):
    from torch._utils import ExceptionWrapper  # the DataLoader's carrier of a worker's exception

    def decode(sample):
        raise KeyError(f"sample {sample} has no 'x.npy' member")

    try:
        decode("s0042")
    except KeyError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False, finish_last=False)
    try:
        wrapped.reraise()
    except KeyError as e:
        rls[0].through(log_uncaught, KeyError, e, e.__traceback__)
    uncaught(rls[1], RuntimeError(GLOO_CLOSED))
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 0 worker 1 raised KeyError: \"sample s0042 has no 'x.npy' "
                                 "member\" in its DataLoader worker process (at ")
    assert "reading shard /data/train-0000007.tar" in verdict[0]
    assert verdict[1].strip().startswith("raised at ") and verdict[1].endswith(" in decode")  # the worker's frame
    assert "usual cause: an error in this DataLoader worker's data path" in verdict[2]


def test_rootcause_killed_rank_without_a_line_leads_before_the_peer(logs):
    """Rank 1 SIGKILLed (no line of its own); rank 0's lost connection is logged before the launcher notices."""
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    rls[0].t = rls[1].t + 0.1
    uncaught(rls[0], RuntimeError(GLOO_CLOSED), dt=0)
    train_log(logs, [(rls[1].t + 0.3, "ERROR", lf.LAUNCHER_TAG, lf.EXITED, 1, 1001, "code -9 (killed by SIGKILL)")])
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 1 was killed by SIGKILL, without a line of its own (at ")
    assert "training of epoch 0; last progress line: batch 6" in verdict[0]
    assert verdict[1].strip() == ("the launcher's line: Rank 1 (pid 1001) exited with code -9 (killed by SIGKILL); "
                                  f"stopping the other ranks; its log ends at {rep['ranks'][1]['last_time']}")
    assert "OOM killer" in verdict[2] and "dmesg" in verdict[2]
    assert [c["kind"] for c in rep["failure"]["consequences"]] == ["lost_peer"]


def test_rootcause_rank_killed_while_saving_says_so(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.epoch(0)
    rls[0].log("INFO", lf.SAVING, "/out/checkpoints/best-epoch=000.ckpt")
    train_log(logs, [(rls[0].t + 20, "ERROR", lf.LAUNCHER_TAG, lf.EXITED, 0, 1000, "code -9 (killed by SIGKILL)")])
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 0 was killed by SIGKILL, without a line of its own (at ")
    assert "after validation end of epoch 0" in verdict[0]
    assert "it was writing checkpoint /out/checkpoints/best-epoch=000.ckpt (Saving at " in verdict[1]
    assert [c["what"] for c in rep["failure"]["consequences"]] == [
        f"rank 1: its log ends at {rep['ranks'][1]['last_time']}: stopped by the launcher"]


def test_rootcause_failed_checkpoint_write_is_rank_0s_even_when_rank_1_says_it_first(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0)
    t = max(rl.t for rl in rls)
    rls[1].t, rls[0].t = t, t + 0.2  # rank 1's INFO line of the same failure comes first by the clock
    why = "/out/checkpoints/last.ckpt: No space left on device"
    rls[1].log("INFO", lf.CKPT_WRITE_FAILED, why, dt=0)
    rls[0].log("ERROR", lf.CKPT_WRITE_FAILED, why, dt=0)
    train_log(logs, [(t + 1, "INFO", lf.LAUNCHER_TAG, lf.RANK_STOPPED, 0, 4, "a checkpoint could not be written")])
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 0 could not write checkpoint /out/checkpoints/last.ckpt: No "
                                 "space left on device (at ")
    assert "usual cause: the disk is full: `df -h` on that directory" in verdict[1]
    assert [c["what"] for c in rep["failure"]["consequences"]] == [
        "rank 1 stopped with it: " + lf.CKPT_WRITE_FAILED.text(why),
        "launcher: " + lf.RANK_STOPPED.text(0, 4, "a checkpoint could not be written")]
    assert rep["state"] == "stopped"


def test_rootcause_shard_limit_names_the_first_unreadable_shard_and_its_reader(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    rls[1].log("ERROR", lf.SHARD_ERROR, "/data/train-000004.tar", "truncated tar: ...", worker=0)
    rls[0].log("ERROR", lf.SHARD_ERROR, "/data/train-000007.tar", "not a tar file", worker=1, dt=3)
    stop = lf.SHARD_LIMIT % (2, 8, "train_shards", 0, 1, 0.1)
    for rl in rls:
        rl.log("ERROR", lf.STOPPING, stop, dt=5)
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: the ranks stopped the run on unreadable shards: 2 of 8 shards of "
                                 "train_shards could not be read in epoch 0, over the limit of 1 "
                                 "(data.max_shard_errors=0.1); rank 1 worker 0 read the first (at ")
    assert "the first unreadable shard: /data/train-000004.tar: truncated tar: ..." in verdict[1]
    assert "`ae-train index`" in verdict[2]
    assert [c["kind"] for c in rep["failure"]["consequences"]] == ["stopped_together"]


def test_rootcause_only_peers_lost_connections_says_no_rank_went_first(logs):
    """Ranks 2 and 3 (on a node whose logs are not here) left no line: ranks 0 and 1 only lost them."""
    rls = [RankWriter(logs, r, 4) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    rls[1].t, rls[0].t = rls[0].t, rls[0].t + 1
    uncaught(rls[1], RuntimeError(GLOO_CLOSED), dt=0)
    uncaught(rls[0], RuntimeError(GLOO_CLOSED), dt=0)
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 1 lost its connection to another rank: RuntimeError: [/__w")
    assert "another rank died first" in verdict[2] and "no rank's log shows a failure of its own" in verdict[2]
    assert rep["missing_ranks"] == [2, 3]


def test_rootcause_raw_nccl_line_is_a_consequence_with_a_borrowed_time(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    rls[0].raw(NCCL_WATCHDOG)  # C++ output: no time stamp of its own
    rls[1].t = rls[0].t + 2
    uncaught(rls[1], MemoryError(), dt=0)
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 1 raised MemoryError (at ")
    assert "the host ran out of memory" in "\n".join(verdict)
    raw = rep["failure"]["consequences"][0]
    assert raw["kind"] == "collective_timeout" and raw["approx_time"] and raw["rank"] == 0
    assert raw["time"] == rep["ranks"][0]["last_time"]  # the line before it
    assert "errors" not in kinds(rep)  # the printed line is in the failure finding


def test_rootcause_chained_exception_shows_where_it_began(logs):
    rl = RankWriter(logs, 0, 1)
    rl.train(0, end=False)
    try:
        try:
            open("/nonexistent/ae/config.json")
        except OSError as e:
            raise RuntimeError("could not load the run's settings") from e
    except RuntimeError as e:
        rl.through(log_uncaught, RuntimeError, e, e.__traceback__, "loader")
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 0 (thread loader) raised RuntimeError: could not load the "
                                 "run's settings")
    assert "its traceback begins with: FileNotFoundError: [Errno 2] No such file or directory" in verdict[2]


def test_rootcause_lost_launcher_and_interrupt(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
        rl.log("ERROR", lf.PARENT_GONE, 81200, 30)
    rls[1].log("ERROR", lf.INTERRUPTED, dt=40)
    rep, verdict = _first_lines(logs)
    assert verdict[0].startswith("!! First failure: rank 0 lost the process that started it (pid 81200): the launcher "
                                 "is gone")
    assert "OOM killer" in verdict[1]
    assert [c["kind"] for c in rep["failure"]["consequences"]] == ["launcher_gone", "interrupted"]


def test_rootcause_sparse_logging_is_not_a_stall_before_the_failure(logs):
    """Debug off: epoch markers only. A crash 20 minutes into the first epoch is a crash, not a hang."""
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.start(lf.TRAINING % 0)
        rl.t += 1200
    uncaught(rls[1], RuntimeError("CUDA error: an illegal memory access was encountered"))
    rep = diagnose_run(logs, now=NOW)
    assert kinds(rep)[0] == "failure" and rep["failure"]["quiet_before_s"] is None
    assert rep["verdict"].startswith("First failure: rank 1 raised RuntimeError: CUDA error: an illegal memory access")
    assert "stuck_in_phase" not in kinds(rep)
    assert "CUDA_LAUNCH_BLOCKING=1" in rep["failure"]["first"]["cause"]


def test_rootcause_preempted_run_is_not_a_failure(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    train_log(logs, [(rls[0].t, "WARNING", lf.LAUNCHER_TAG, lf.RECEIVED, "SIGTERM", 2)])
    for rl in rls:
        rl.log("INFO", lf.PREEMPT_SAVED, "SIGTERM", 0, 7, "/out/checkpoints/last.ckpt")
    rep = diagnose_run(logs, now=NOW)
    assert rep["failure"] is None and "failure" not in kinds(rep) and rep["state"] == "stopped"
    assert any("the run was stopped from outside" in f["message"] for f in rep["findings"])


def test_rootcause_finished_run_is_not_a_failure(logs):
    rls = finished_run(logs)
    uncaught(rls[1], ValueError("a logger thread gave up"), thread="metrics")
    rep = diagnose_run(logs, now=NOW)
    assert rep["failure"] is None and kinds(rep)[0] == "errors" and rep["state"] == "finished"


def test_rootcause_json_carries_the_same_order(logs, capsys):
    _crash_then_peer(logs, peer_first=True)
    assert main([str(logs), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    first = rep["failure"]["first"]
    assert rep["findings"][0]["kind"] == "failure" and rep["verdict"].startswith(f"First failure: {first['what']} (")
    times = [c["time"] for c in rep["failure"]["consequences"]]
    assert times == sorted(times) and first["cause"] and first["file"].startswith("debug_rank1_")
