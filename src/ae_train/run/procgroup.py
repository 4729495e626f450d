"""A rank's process-group set-up: a store that no earlier attempt wrote to, and never silent while blocked.

Under torchrun every rank of every attempt is a client of the agent's TCPStore (MASTER_ADDR:MASTER_PORT,
TORCHELASTIC_USE_AGENT_STORE=True), and torch keeps that one store for all restarts of the job: the
static rendezvous (--master_addr/--master_port) creates it once, the c10d rendezvous (--standalone)
shares one store server across its rounds, and env:// adds no per-attempt prefix to the keys. A
restarted attempt then reads what the dead one wrote: gloo's connectFullMesh takes a dead rank's
address from the old keys ("Connection refused") or waits for it (a hang), depending on which rank
writes first. So here rank 0 of each attempt serves a store of its own on a free port and publishes its
address with a fresh nonce in the agent's store; the other ranks take that address once the store there
answers with the same nonce (an earlier attempt's store is gone: its port refuses, or it holds no such
nonce) and, under the static rendezvous, once it names their own restart (there the dead attempt's
rank 0 on another node may still be alive). init_process_group runs on that store: nothing of a dead
attempt is read. Started by our launcher or srun, rank 0 serves the store at MASTER_ADDR:MASTER_PORT,
as env:// would.

A thread watches the stages: blocked in one for `log.hang_timeout_s`, it logs HANG SUSPECTED naming the
stage and the ranks not yet connected (each rank sets `ae_train/joined/<rank>` on arriving), with the
rank's stack dump; `progress resumed after N s` when set-up goes on.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from datetime import timedelta

from .. import logformat as lf
from .. import stacks

log = logging.getLogger(__name__)
STORE_KEY = "ae_train/store"  # in torchrun's agent store: "<addr> <port> <nonce> <restart>" of this attempt's store
NONCE_KEY = "ae_train/nonce"  # in this attempt's store: the nonce published with its address
JOINED, READY = "ae_train/joined/", "ae_train/ready/"
POLL_S = 0.2
PROBE_S = 5.0  # a published store that does not answer within this is not this attempt's
# A live store published for another restart count is taken after this long: under the c10d rendezvous a
# node restarted for a membership change keeps its count, and every earlier attempt is gone by then anyway.
OTHER_RESTART_GRACE_S = 30.0
LISTED = 16  # ranks named in a HANG line; more are counted


def torchrun_agent_store() -> bool:
    """Started by torchrun with the agent's store shared by its workers (every rendezvous by default)."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


class SetupWatch:
    """Stage and time of the set-up, and the thread that says HANG SUSPECTED when it stops moving."""

    def __init__(self, rank: int, world: int, timeout_s: float, poll_s: float = 1.0):
        self.rank, self.world, self.timeout_s, self.poll_s = rank, world, timeout_s, min(poll_s, timeout_s / 2)
        self.stage, self.event, self.since = "starting", "start-up", time.monotonic()
        self.store_at: tuple[str, int] | None = None  # where every rank checks in
        self.waits_for = "0"  # who is missing while the store is not known yet
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ae-train-setup-watch", daemon=True)

    def start(self) -> "SetupWatch":
        self._thread.start()
        return self

    def at(self, stage: str, event: str) -> None:
        """A new stage: logged (INFO, debug log), and the clock starts again."""
        self.stage, self.event, self.since = stage, event, time.monotonic()
        log.info(lf.SETUP.template, event)

    def done(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        alerted: float | None = None  # when the last alert was written, while stuck
        stuck_since = self.since      # the stage start the alerts are about
        while not self._done.wait(self.poll_s):
            now = time.monotonic()
            if alerted is not None and self.since != stuck_since:
                log.warning(lf.RESUMED.template, self.since - stuck_since)
                alerted = None
            if now - self.since >= self.timeout_s and (alerted is None or now - alerted >= self.timeout_s):
                alerted, stuck_since = now, self.since
                self._alert(now - self.since)
        if alerted is not None:
            log.warning(lf.RESUMED.template, time.monotonic() - stuck_since)

    def _alert(self, idle: float) -> None:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - idle))
        phase = lf.SETUP_PHASE % (self.stage, self.not_connected())
        log.error(lf.HANG.template, idle, phase, f"{self.event} at {at}")
        stacks.dump(f"rank {self.rank}", "hang")

    def not_connected(self) -> str:
        """The ranks that have not checked in at the store (or, all there, not through set-up)."""
        if self.store_at is None:
            return self.waits_for
        if not _answers(*self.store_at):
            return f"unknown (nothing answers at the store's address {self.store_at[0]}:{self.store_at[1]})"
        try:
            import torch.distributed as dist
            client = dist.TCPStore(*self.store_at, None, False, timedelta(seconds=PROBE_S))
            missing = [r for r in range(self.world) if not client.check([f"{JOINED}{r}"])]
            if missing:
                return _ranks(missing)
            behind = [r for r in range(self.world) if not client.check([f"{READY}{r}"])]
            return f"none; every rank reached the store, not through set-up yet: {_ranks(behind) or 'none'}"
        except (RuntimeError, OSError) as e:  # the store itself is gone or blocked: say so
            return f"unknown (the store at {self.store_at[0]}:{self.store_at[1]} does not answer: {e})"


def _ranks(ranks: list[int]) -> str:
    named = ", ".join(map(str, ranks[:LISTED]))
    return named + (f" and {len(ranks) - LISTED} more ({len(ranks)} in all)" if len(ranks) > LISTED else "")


def _answers(addr: str, port: int) -> bool:
    """A listening socket there (a plain connect: a dead store is refused at once, and quietly)."""
    try:
        socket.create_connection((addr, port), timeout=PROBE_S).close()
        return True
    except OSError:
        return False


def _serve_attempt_store(agent, addr: str, timeout: timedelta, restart: str, watch: SetupWatch):
    """Rank 0 under torchrun: a store of this attempt on a free port, published in the agent's store."""
    import torch.distributed as dist

    store = dist.TCPStore(addr, 0, None, True, timeout, wait_for_workers=False)
    nonce = secrets.token_hex(8)
    store.set(NONCE_KEY, nonce)
    agent.set(STORE_KEY, f"{addr} {store.port} {nonce} {restart}")
    watch.store_at = (addr, store.port)
    watch.at("connecting every rank", f"serving this attempt's store at {addr}:{store.port} (torchrun restart "
             f"{restart}; published in the agent's store at {agent_at()})")
    return store


def agent_at() -> str:
    return f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"


def _find_attempt_store(agent, timeout: timedelta, restart: str, watch: SetupWatch):
    """Other ranks under torchrun: the store rank 0 of this attempt published, once it is live and ours."""
    import torch.distributed as dist

    watch.at(f"waiting for rank 0 to publish this attempt's store in torchrun's agent store at {agent_at()}",
             f"looking for rank 0's store (torchrun restart {restart})")
    seen: dict[str, float] = {}  # published value -> since when it is live
    while True:
        value = agent.get(STORE_KEY).decode() if agent.check([STORE_KEY]) else ""
        fields = value.split()
        if len(fields) == 4 and _answers(fields[0], int(fields[1])):
            addr, port, nonce, theirs = fields[0], int(fields[1]), fields[2], fields[3]
            live_for = time.monotonic() - seen.setdefault(value, time.monotonic())
            if theirs == restart or live_for >= OTHER_RESTART_GRACE_S:
                try:
                    store = dist.TCPStore(addr, port, None, False, timedelta(seconds=PROBE_S))
                    if store.check([NONCE_KEY]) and store.get(NONCE_KEY).decode() == nonce:
                        store.set_timeout(timeout)
                        watch.store_at = (addr, port)
                        watch.at("connecting every rank", f"joined rank 0's store at {addr}:{port} (torchrun "
                                 f"restart {theirs})")
                        return store
                except RuntimeError:  # gone between the probe and the connect: look again
                    pass
        time.sleep(POLL_S)


def _wait_for_listener(addr: str, port: int, timeout: timedelta) -> None:
    """Until rank 0's store listens (a quiet poll: TCPStore's own connect retries fill the log)."""
    deadline = time.monotonic() + timeout.total_seconds()
    while not _answers(addr, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0's store at {addr}:{port} did not answer within {timeout.total_seconds():.0f} s "
                               "(trainer.ddp_timeout_s)")
        time.sleep(POLL_S)


def join(backend: str, rank: int, world: int, addr: str, port: int, timeout: timedelta,
         hang_timeout_s: float) -> SetupWatch:
    """init_process_group on a store of this attempt only (see the module docstring), watched. Returns
    the watch, still running: the caller's next step (agreeing on the run) is set-up too; call done()."""
    import torch.distributed as dist

    watch = SetupWatch(rank, world, hang_timeout_s).start()
    try:
        t0 = time.monotonic()
        if torchrun_agent_store():
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            watch.waits_for = "none (torchrun's agent store does not answer)"
            watch.at(f"connecting to torchrun's agent store at {agent_at()}", f"connecting to the agent's store "
                     f"at {agent_at()} (torchrun restart {restart})")
            agent = dist.TCPStore(addr, port, None, False, timeout)
            watch.waits_for = "0"
            store = _serve_attempt_store(agent, addr, timeout, restart, watch) if rank == 0 else \
                _find_attempt_store(agent, timeout, restart, watch)
        else:
            watch.waits_for = "0" if rank else "none"
            watch.at(f"connecting to rank 0's store at {addr}:{port}", f"serving the store at {addr}:{port}" if rank == 0
                     else f"connecting to rank 0's store at {addr}:{port}")
            if rank:
                _wait_for_listener(addr, port, timeout)
            # world_size None: no wait for every client in here (init_process_group waits, watched)
            store = dist.TCPStore(addr, port, None, rank == 0, timeout, wait_for_workers=False, multi_tenant=True)
            watch.store_at = (addr, port)
        store.set(f"{JOINED}{rank}", f"{socket.gethostname()} {os.getpid()}")
        watch.at(f"init_process_group ({backend}): connecting every rank", f"checked in at the store; "
                 f"connecting {world} ranks ({backend})")
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        store.set(f"{READY}{rank}", "1")
        watch.at("agreeing on the run's timestamp with rank 0", f"process group ready: {world} ranks ({backend}) in "
                 f"{time.monotonic() - t0:.1f}s")
    except BaseException:
        watch.done()
        raise
    return watch
