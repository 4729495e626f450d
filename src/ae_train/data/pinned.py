"""Page-locked batch memory: the batch ring (ring.py) pinned once for asynchronous copies to the device,
and its slots freed only after the device has copied from them.

`register` page-locks the ring's mapping (cudaHostRegister), so that `.to(device, non_blocking=True)`
from a slot is a real asynchronous copy; it logs a warning and answers False where it cannot (the
copies then stay synchronous). A slot whose tensors are gone may still be being copied: `Releaser`
frees it after a CUDA event recorded on the current stream has passed, in a thread, so that the rank
never blocks on the device.
"""
from __future__ import annotations

import logging
import queue
import threading

import torch

from .. import logformat as lf

log = logging.getLogger(__name__)


class Releaser:
    """Calls `release(slot, hand-out)` once the device has copied from that slot: waits on CUDA events
    in a thread."""

    def __init__(self, release):
        self._release, self._queue = release, queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ae-train-ring-releaser", daemon=True)
        self._thread.start()

    def after_event(self, flat: int, given: int) -> None:
        event = torch.cuda.Event()
        event.record()  # on the current stream: after the copy of this slot to the device
        self._queue.put((event, flat, given))

    def drain(self) -> None:
        """Returns once every slot queued so far is released."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            event, flat, given = item
            event.synchronize()  # releases the GIL
            self._release(flat, given)


def register(address: int, nbytes: int) -> bool:
    """Page-lock memory once, so that copies from it to the device run asynchronously."""
    try:
        err = torch.cuda.cudart().cudaHostRegister(address, nbytes, 0)
    except Exception as e:  # no CUDA runtime bindings: copies stay synchronous
        log.warning(lf.RING_PIN_FAILED.template, nbytes >> 20, e)
        return False
    if int(err) != 0:
        log.warning(lf.RING_PIN_FAILED.template, nbytes >> 20, f"cudaHostRegister error {err}")
        return False
    return True


def unregister(address: int) -> bool:
    try:
        return int(torch.cuda.cudart().cudaHostUnregister(address)) == 0
    except Exception:
        return False
