"""The batch ring: batches cross from DataLoader workers through reused shared-memory slots, not a new
segment each (handover.RingHandOver is how the reader and the loader use it).

The stock DataLoader moves every batch through a fresh shared-memory segment (allocate, map, fault
in, pass its file descriptor, unmap), a pickle and two queue hops with their feeder threads. Here the
rank makes, before the workers fork, one anonymous shared mapping (MAP_SHARED: no /dev/shm name, so
nothing can leak there) with `slots` batch-sized slots per worker, and two semaphores per worker:
`ready` (batches published, not yet taken by the rank) and `free` (slots the worker may fill).

A worker runs every epoch inside the DataLoader's first fetch, forked once per run (not once per
epoch: no fork, first read and exit at each epoch's start): it waits for the rank to start a round
(`go`, with the epoch and the batches to skip in the mapping), takes a free slot, gathers or decodes
each batch straight into it, writes the slot's number into its table and posts `ready`; at the end of
the epoch it posts an end mark (or a failure mark before its exception propagates) and waits for the
next round. A round the rank leaves early (a cut-short epoch) is abandoned: the workers see `abort`
at their next slot, stop and report idle before the rank resets the ring for the next one. The
DataLoader still does the control: worker processes, worker_init_fn, worker start/stop, the exception
with the worker's traceback (the rank drains the DataLoader's iterator once a worker reports failure),
dead workers (its SIGCHLD handler; the rank's waits also check the processes whose ids the workers
wrote into the mapping), shutdown. The rank takes batches in the DataLoader's order (round robin over
the workers that have batches left, from worker 0) and wraps each slot as a tensor view: no pickle,
no copy, no queue hop, no system call while the workers keep ahead.

Why rounds and not the DataLoader's `persistent_workers` (issue 21's trial, bench/handover_trial.py,
docs/BENCHMARKS.md): kept workers resumed at each `iter(loader)`, each `__iter__` reading the epoch
and skip from this mapping, were as fast (within the noise of a shared 2-core machine) but not
simpler. Stopping them still needs torch's private `_MultiProcessingDataLoaderIter._shutdown_workers`
(torch 2.13 has no public way; rounds need the same one call, `stop_workers`), and with
`persistent_workers` Lightning's fit-loop teardown calls it itself (`CombinedLoader.reset` via
`loader._iterator`), before the DataModule's `teardown` can close the ring: a worker blocked on a full
slot after an epoch cut short cannot see the DataLoader's `done_event` (not given to dataset code), so
each join waits out MP_STATUS_CHECK_INTERVAL (5 s) and the worker is killed: 10 s measured with 2
workers at the end of every run stopped mid-epoch, unless yet another mechanism aborts the round
first. With rounds, `persistent_workers=False` leaves Lightning nothing to stop.

A slot goes back to its worker when no tensor of the rank uses it any more: every hand-out gets its
own storage over the slot's memoryview, so the memoryview's reference count says whether any view,
however derived, is still alive (Lightning's prefetcher holds one batch ahead; a callback may keep
one longer; a slot is never rewritten under either). The rank checks this before it takes the next
batch. While the rank holds `slots - 2` live views of one worker, that worker's next batches are
handed out as copies, so the worker always has a slot to fill and the two sides never wait on each
other. With `pin`, the mapping is page-locked once (cudaHostRegister) so `.to(device,
non_blocking=True)` is a real asynchronous copy; a slot whose views died is then freed after a CUDA
event recorded on the current stream has passed (the copy from it was queued before), by a thread,
so that the rank never blocks on the device (pinned.py).

With `key_bytes` (the sample ledger) each slot has a keys area beside it: the worker writes the
batch's keys there (NUL-separated UTF-8, its length first) before publishing, and the rank hands out
the slot's view with them as a KeyedBatch.

Control words (int64, in the mapping): released[w, s] = the last hand-out of slot s the rank is done
with (the worker counts its own, a slot is free when both agree; -1: still used from an earlier
epoch), table[w, k] = the slot of the worker's k-th batch (mod slots + 1; -1 end, -2 failed), closed
(the workers leave), abort (the round is abandoned), the round (number, epoch, batches to skip),
done[w] = the last round worker w finished, pid[w] = its process.
The semaphores order the writes (post releases, wait acquires), on any CPU.
"""
from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import sys
import time
import weakref
from typing import Iterable

import numpy as np
import torch

from .. import logformat as lf
from ..batch import KeyedBatch
from .pinned import Releaser, register, unregister

log = logging.getLogger(__name__)
PAGE = mmap.PAGESIZE
END, FAILED = -1, -2
POLL_S = 0.05  # waits check for closed rings, dead workers and a dead rank this often


class KeysTooLong(ValueError):
    """A batch's keys do not fit the keys area of a slot."""


class RingClosed(RuntimeError):
    """The rank shut the iterator down while this worker waited for a free slot."""


def _round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


class SlotRing:
    """`slots` slots of one batch (`shape`, `dtype`) per worker, in one mapping made before the fork."""

    def __init__(self, workers: int, slots: int, shape: tuple[int, ...], dtype, pin: bool = False, key_bytes: int = 0):
        if workers < 1 or slots < 3:
            raise ValueError(f"a ring needs >= 1 worker and >= 3 slots per worker, got {workers} and {slots}")
        self.workers, self.slots = workers, slots
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.torch_dtype = torch.from_numpy(np.empty(0, self.dtype)).dtype
        self.count = int(np.prod(self.shape))
        self.slot_bytes = self.count * self.dtype.itemsize
        n, self._period = workers * slots, slots + 1
        table_end = n + workers * self._period
        words = table_end + 5 + 2 * workers
        self._stride, self._data_at = _round_up(self.slot_bytes), _round_up(words * 8)
        self.key_bytes = key_bytes  # keys area per slot (0: batches carry no keys)
        self._keys_at = self._data_at + n * self._stride
        self._key_stride = 8 + key_bytes if key_bytes else 0  # a length word, then the keys
        self.nbytes = self._keys_at + n * self._key_stride
        self._mm = mmap.mmap(-1, self.nbytes)  # anonymous, MAP_SHARED: forked workers write the same pages
        ctrl = np.frombuffer(self._mm, np.int64, words)
        self._released, self._table = ctrl[:n], ctrl[n:table_end].reshape(workers, self._period)
        self._closed, self._abort = ctrl[table_end:table_end + 1], ctrl[table_end + 1:table_end + 2]
        self._round = ctrl[table_end + 2:table_end + 5]  # number, epoch, batches of the epoch to skip
        self._done = ctrl[table_end + 5:table_end + 5 + workers]  # per worker: the last round it finished
        self._pids = ctrl[table_end + 5 + workers:]  # per worker: its process (0: not started yet)
        self._views = [memoryview(self._mm)[self._offset(i):self._offset(i) + self.slot_bytes] for i in range(n)]
        self._baseline = sys.getrefcount(self._views[0])  # the list's reference + getrefcount's argument
        self._given = [0] * n  # hand-outs of each slot in this epoch (the worker counts the same)
        self._held: list[tuple[int, int]] = []  # (slot, hand-out) given as views, maybe still alive
        self._live = [0] * workers  # entries of _held per worker
        self.copies = 0  # batches handed out as copies (the rank kept too many views of one worker)
        self._ready: list = []
        self._free: list = []
        self._go: list = []
        self._open = False  # a round was started and not every worker's end mark taken yet
        self._active = None  # weakref to the RingIterator of the round now
        self._releaser: Releaser | None = None
        self.pinned = bool(pin and torch.cuda.is_available() and register(self._address(), self.nbytes))

    def _offset(self, flat: int) -> int:
        return self._data_at + flat * self._stride

    def _address(self) -> int:
        return np.frombuffer(self._mm, np.uint8, 1).ctypes.data

    def slot_array(self, flat: int) -> np.ndarray:
        """A numpy view (B, *shape) of one slot: the worker writes through it."""
        return np.frombuffer(self._mm, self.dtype, self.count, self._offset(flat)).reshape(self.shape)

    def write_keys(self, flat: int, keys: list[str]) -> None:
        """In a worker: the keys of the batch in slot `flat`, before it is published."""
        blob = "\0".join(keys).encode()
        if len(blob) > self.key_bytes:
            raise KeysTooLong(f"the keys of one batch take {len(blob)} bytes, more than the {self.key_bytes} "
                              "the ledger keeps per batch (256 per sample)")
        at = self._keys_at + flat * self._key_stride
        self._mm[at + 8:at + 8 + len(blob)] = blob
        self._mm[at:at + 8] = len(blob).to_bytes(8, "little")

    def read_keys(self, flat: int) -> list[str]:
        at = self._keys_at + flat * self._key_stride
        n = int.from_bytes(self._mm[at:at + 8], "little")
        return self._mm[at + 8:at + 8 + n].decode().split("\0")

    def writer(self, worker: int) -> "SlotWriter":
        """In a worker: its side of the ring."""
        return SlotWriter(self, worker)

    def rounds(self, worker: int):
        """In a worker: (epoch, batches to skip) of each round the rank starts, until it closes the ring."""
        parent, go = os.getppid(), self._go[worker]
        self._pids[worker] = os.getpid()
        while True:
            while not go.acquire(timeout=POLL_S):
                if self._closed[0]:
                    return
                if os.getppid() != parent:
                    raise SystemExit(0)  # the rank died
            if self._closed[0]:
                return
            number = int(self._round[0])
            yield int(self._round[1]), int(self._round[2])
            self._done[worker] = number  # idle: the rank may reset the ring for the next round

    def stop_workers(self, inner) -> None:
        """The workers leave their rounds (they are idle, or abandon the one under way), then the
        DataLoader stops them as it stops its workers at the end of an epoch (`inner`: its iterator;
        there is no public way to stop them at once)."""
        self._closed[0] = 1
        self._open = False
        for go in self._go:  # idle workers wake now, not at their next poll
            go.release()
        inner._shutdown_workers()

    def dead_workers(self) -> list[int]:
        """The processes of workers that started and have exited (or were reaped by the DataLoader)."""
        dead = []
        for pid in self._pids.tolist():
            if pid > 0:
                try:
                    if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                        dead.append(pid)
                except ChildProcessError:  # reaped already: gone
                    dead.append(pid)
        return dead

    # ---- the rank's side ----
    def _begin(self, it: "RingIterator", epoch: int, skip: int, fresh: bool) -> None:
        """Before a round: the workers idle (forked next when fresh), all slots free but those whose
        views are still alive, the round's epoch and skip in the mapping."""
        if self._open and not fresh:
            self._abandon(it)
        if self._releaser is not None:
            self._releaser.drain()  # no late release of an old hand-out into the new epoch
        self._reclaim()
        self._released[:] = 0
        self._table[:] = 0
        self._given = [0] * len(self._given)
        busy = [0] * self.workers
        self._held = [(flat, 0) for flat, _ in self._held]
        for flat, _ in self._held:  # still used by the rank: not free for the new workers until dropped
            self._released[flat] = -1
            busy[flat // self.slots] += 1
        if fresh:  # made before the fork: the workers share these
            ctx = multiprocessing.get_context("fork")
            self._ready = [ctx.Semaphore(0) for _ in range(self.workers)]
            self._free = [ctx.Semaphore(self.slots - busy[w]) for w in range(self.workers)]
            self._go = [ctx.Semaphore(0) for _ in range(self.workers)]
            self._round[0], self._done[:], self._pids[:] = 0, 0, 0
        else:  # the same workers, idle: the counts of the new round
            for w in range(self.workers):
                _drain(self._ready[w])
                _drain(self._free[w])
                for _ in range(self.slots - busy[w]):
                    self._free[w].release()
        self._closed[0] = self._abort[0] = 0
        self._round[0] += 1
        self._round[1], self._round[2] = epoch, skip
        self._open = True
        self._active = weakref.ref(it)
        for go in self._go:
            go.release()

    def _abandon(self, it: "RingIterator") -> None:
        """The round under way is left early: its workers stop at their next slot and go idle."""
        self._abort[0] = 1
        number = int(self._round[0])
        while any(int(d) != number for d in self._done):
            time.sleep(POLL_S / 10)
            it._check_alive()
        self._open = False

    def _release(self, flat: int, given: int) -> None:
        self._released[flat] = given
        self._free[flat // self.slots].release()

    def _reclaim(self) -> None:
        """Give back the slots whose views no tensor uses any more."""
        keep = []
        for flat, given in self._held:
            if sys.getrefcount(self._views[flat]) > self._baseline:
                keep.append((flat, given))
                continue
            self._live[flat // self.slots] -= 1
            if self.pinned and torch.cuda.is_initialized():
                if self._releaser is None:
                    self._releaser = Releaser(self._release)
                self._releaser.after_event(flat, given)
            else:
                self._release(flat, given)
        self._held = keep

    def _hand_out(self, worker: int, slot: int) -> torch.Tensor:
        flat = worker * self.slots + slot
        self._given[flat] += 1
        given = self._given[flat]
        if self._live[worker] >= self.slots - 2:  # the rank keeps many: a copy, so the worker has a slot
            self.copies += 1
            out = torch.from_numpy(self.slot_array(flat).copy())
            self._release(flat, given)
            return out
        self._live[worker] += 1
        self._held.append((flat, given))
        return torch.frombuffer(self._views[flat], dtype=self.torch_dtype).view(self.shape)

    def hand_out(self, worker: int, slot: int):
        """The batch in a worker's slot: a tensor, or with keys a KeyedBatch (keys read before the slot
        can be given back)."""
        if not self.key_bytes:
            return self._hand_out(worker, slot)
        keys = self.read_keys(worker * self.slots + slot)
        return KeyedBatch(self._hand_out(worker, slot), keys)

    def close(self) -> None:
        """Stop the releaser, unpin; the memory stays until its last view is gone."""
        self._closed[0] = 1
        if self._releaser is not None:
            self._releaser.stop()
            self._releaser = None
        if self.pinned:
            self.pinned = not unregister(self._address())

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone already
            pass


class SlotWriter:
    """A worker's side: take a free slot, fill it, publish it; then an end or failure mark."""

    def __init__(self, ring: SlotRing, worker: int):
        self.ring, self.worker = ring, worker
        self._first = worker * ring.slots
        self._arrays = [ring.slot_array(self._first + s) for s in range(ring.slots)]
        self._issued = [0] * ring.slots  # hand-outs of each slot; free when the rank released as many
        self._taken: dict[int, int] = {}  # data address -> slot, being filled
        self._spare: list[int] = []  # taken and dropped (skipped on resume): free without a wait
        self._ready, self._free = ring._ready[worker], ring._free[worker]
        self._published = 0
        self._parent = os.getppid()
        self.waited = 0.0  # seconds spent waiting for a free slot (the rank is slower than this worker)

    def take(self) -> np.ndarray:
        """A free slot (B, *shape) to fill; waits while the rank still uses all of them."""
        if self.ring._closed[0] or self.ring._abort[0]:
            raise RingClosed("the rank closed the batch ring or left the round")
        if self._spare:
            s = self._spare.pop()
        else:
            if not self._free.acquire(False):
                t0 = time.perf_counter()
                while not self._free.acquire(timeout=POLL_S):
                    if self.ring._closed[0] or self.ring._abort[0]:
                        raise RingClosed("the rank closed the batch ring or left the round")
                    if os.getppid() != self._parent:
                        raise SystemExit(0)  # the rank died: nobody will free a slot
                self.waited += time.perf_counter() - t0
            busy = set(self._taken.values())
            released = self.ring._released
            s = next(s for s in range(self.ring.slots)
                     if released[self._first + s] == self._issued[s] and s not in busy)
        arr = self._arrays[s]
        self._taken[arr.ctypes.data] = s
        return arr

    def publish(self, batch: np.ndarray, keys: list[str] | None = None) -> None:
        """Hand `batch` (and its keys) to the rank: its slot when it was filled in place, else a copy
        into a free one."""
        s = self._taken.pop(batch.ctypes.data, None) if batch.shape == self.ring.shape else None
        if s is None:
            arr = self.take()
            arr[...] = batch
            s = self._taken.pop(arr.ctypes.data)
        if keys is not None:
            self.ring.write_keys(self._first + s, keys)
        self._issued[s] += 1
        self._mark(s)

    def drop(self, batch: np.ndarray) -> None:
        """`batch` will not be published (skipped on resume): its slot is free again."""
        s = self._taken.pop(batch.ctypes.data, None)
        if s is not None:
            self._spare.append(s)

    def _mark(self, value: int) -> None:
        self.ring._table[self.worker, self._published % self.ring._period] = value
        self._published += 1
        self._ready.release()  # after the slot's data and the table entry

    def feed(self, batches: Iterable[tuple[np.ndarray, list[str] | None]]) -> None:
        """Publish every (batch, keys), then the end mark; a failure mark before an exception propagates
        (the DataLoader carries it to the rank with this worker's traceback)."""
        try:
            for batch, keys in batches:
                self.publish(batch, keys)
        except RingClosed:
            return  # the rank stopped or left the round: end it quietly
        except BaseException:
            self._mark(FAILED)
            raise
        self._mark(END)
        log.debug(lf.RING_WORKER.template,
                  self._published - 1, self.waited)


class RingIterator:
    """The rank's iterator over one round: batches from the workers' slots as tensor views, in the
    DataLoader's order. `inner`: the DataLoader's own iterator, whose workers serve every round (the
    hand-over keeps it for the next round); `own()` makes it, forking the workers, when none serve."""

    def __init__(self, handover, own, epoch: int, skip: int):
        ring = handover.ring
        self._handover, self._ring = handover, ring
        self._own = own  # holds the loader: its workers are not stopped while this iterator lives
        self.inner = handover.inner  # the workers of the earlier rounds, idle (None: none yet)
        ring._begin(self, epoch, skip, fresh=self.inner is None)
        if self.inner is None:
            self.inner = handover.inner = own()  # forks the workers; each waits for its rounds in its first fetch
        self._left = list(range(ring.workers))  # workers with batches left, in turn order
        self._turn = 0
        self._taken = [0] * ring.workers

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        ring = self._ring
        if ring._held:
            ring._reclaim()
        while self._left:
            worker = self._left[self._turn]
            value = self._next_data(worker)
            if value >= 0:
                self._turn = (self._turn + 1) % len(self._left)
                return ring.hand_out(worker, value)
            del self._left[self._turn]  # the next worker moves into this turn
            self._turn = self._turn % len(self._left) if self._left else 0
            if value == FAILED:
                self._raise_failure()
        return self._finish()

    def _next_data(self, worker: int) -> int:
        """The table entry of this worker's next batch, once it is published. (The DataLoader's name for
        this wait: `ae-train diagnose` tells a main thread waiting for data by it in stack dumps.)"""
        ready = self._ring._ready[worker]
        if not ready.acquire(False):
            while not ready.acquire(timeout=POLL_S):
                self._check_alive()
        k = self._taken[worker]
        self._taken[worker] = k + 1
        return int(self._ring._table[worker, k % self._ring._period])

    def _check_alive(self) -> None:
        dead = self._ring.dead_workers()
        if dead:  # the DataLoader's own words (its SIGCHLD handler usually raises first)
            self._handover.close()
            raise RuntimeError(f"DataLoader worker (pid(s) {', '.join(map(str, dead))}) exited unexpectedly")

    def _raise_failure(self) -> None:
        """A worker failed: stop the others, then let the DataLoader raise the worker's exception."""
        self._ring._closed[0] = 1
        self._ring._open = False
        try:
            for _ in self.inner:  # the other workers end quietly; the failed one's exception is raised here
                pass
        finally:
            self._handover.close()
        raise RuntimeError("a DataLoader worker failed without an exception")

    def _finish(self):
        """Every worker ended the round: they wait for the next one."""
        if self._ring._open and self._ring._active and self._ring._active() is self:
            self._ring._open = False
            if self._ring.copies:
                log.debug(lf.RING_COPIES.template, self._ring.copies, self._ring.slots - 2)
        raise StopIteration


def _drain(sem) -> None:
    while sem.acquire(False):
        pass
