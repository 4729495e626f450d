"""How many samples each shard holds: the counts behind equal batches per rank.

Counts come from `ae_index.json` beside the shards (read through the shard's own opener, so an index
next to `s3://` or `http://` shards works; written by `ae-train make-shards` and `ae-train index`),
then from counts an earlier run of the same output_dir made, and only then from reading the shard:
a header scan for local plain tars, a streamed read for the rest, shards in parallel, a progress line
every few seconds. A local shard whose size changed since it was indexed is counted again. A shard
whose count does not arrive within `timeout_s` (a hung mount, a stalled server) is given up on like
an unreadable one. Counts are never guessed: equal batches per rank depend on them.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager

from .. import logformat as lf
from ..logs import HEARTBEAT
from .source import open_shard, read_small
from .stream import iter_samples
from .tario import ShardError, group_samples, iter_members
from .urls import INDEX_NAME, DataError, beside, is_compressed, list_shards, local_path, shard_name, write_small

__all__ = ["INDEX_NAME", "COUNTS_ENV", "DataError", "list_shards", "sample_counts", "write_index", "error_limit",
           "count_shard", "count_stream", "reason", "reading", "reads_in_flight"]

log = logging.getLogger(__name__)
COUNTS_ENV = "AE_TRAIN_SHARD_COUNTS"  # file of counts and sample specs the launcher resolved once for all ranks
PARALLEL = 8  # shards counted at once: reads are I/O (network, gunzip outside the GIL)
PROGRESS_EVERY_S = 5.0


def error_limit(max_shard_errors: float, num_shards: int) -> int:
    """data.max_shard_errors as a shard count: a fraction of the split when below 1, else a count."""
    return int(max_shard_errors * num_shards) if max_shard_errors < 1 else int(max_shard_errors)


def reason(e: BaseException) -> str:
    """The text an ERROR line gives for a failed read: strerror for OS errors, else the message."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def _load_index(url: str, cache: dict) -> dict:
    where = beside(url, INDEX_NAME)
    if where is None:
        return {}
    if where not in cache:
        try:
            cache[where] = json.loads(read_small(where)).get("shards", {})
        except FileNotFoundError:
            cache[where] = {}
        except OSError as e:  # absent remote index: curl 22, S3 NoSuchKey, ...
            if local_path(where) is not None:
                log.warning(lf.INDEX_IGNORED.template, where, reason(e))
            cache[where] = {}
        except ValueError as e:
            log.warning(lf.INDEX_IGNORED.template, where, e)
            cache[where] = {}
    return cache[where]


def write_index(entries: dict[str, dict]) -> list[str]:
    """Merge {shard URL: count entry} into the ae_index.json beside each shard (local or s3://)."""
    by_index: dict[str, dict] = {}
    for url, entry in entries.items():
        where = beside(url, INDEX_NAME)
        if where is None:
            raise OSError(f"no place beside {url} for {INDEX_NAME}")
        by_index.setdefault(where, {})[shard_name(url)] = entry
    written = []
    for where, new in by_index.items():
        shards = dict(_load_index(where, {}))  # beside(index, INDEX_NAME) is the index itself
        shards.update(new)
        write_small(where, json.dumps({"version": 1, "shards": dict(sorted(shards.items()))}, indent=1).encode())
        written.append(where)
    return written


_READING: dict[int, tuple[str, float]] = {}  # reads under way in this process (counting, probing)


@contextmanager
def reading(url: str):
    """Marks `url` as being read, for the launcher's watchdog to name when nothing progresses."""
    token = id(object())
    _READING[token] = (url, time.monotonic())
    try:
        yield
    finally:
        _READING.pop(token, None)


def reads_in_flight() -> list[tuple[str, float]]:
    """(url, seconds) of the reads under way, longest first."""
    now = time.monotonic()
    return sorted(((u, now - t) for u, t in list(_READING.values())), key=lambda x: -x[1])


def count_shard(url: str) -> dict:
    """Count one shard now, its index entry: a header scan with seeks for a local plain tar, else a
    streamed read."""
    with reading(url):
        return _count_shard(url)


def _count_shard(url: str) -> dict:
    path = local_path(url)
    if path is not None and not is_compressed(url) and os.path.isfile(path):
        return _count_headers(url)
    entry = count_stream(url)
    if path is not None:
        entry["bytes"] = os.path.getsize(path)
    return entry


def _count_headers(url: str) -> dict:
    """A local plain tar: its headers read with seeks, no member data."""
    with open_shard(url) as f:
        total = os.fstat(f.fileno()).st_size

        def read(off: int, n: int) -> bytes:
            f.seek(off)
            return f.read(n)
        samples = group_samples(iter_members(read, total))
    return {"bytes": total, **_tally(parts for _, parts in samples)}


def count_stream(url: str) -> dict:
    """The samples per extension of a shard read as a stream (no member kept)."""
    stream = open_shard(url)
    try:
        return _tally(parts for _, parts in iter_samples(stream, want=set()))
    finally:
        stream.close()


def _tally(samples) -> dict:
    exts: dict[str, int] = {}
    n = 0
    for parts in samples:
        n += 1
        for ext in parts:
            exts[ext] = exts.get(ext, 0) + 1
    return {"samples": n, "exts": exts}


def _known_entry(url: str, index: dict, known: dict) -> dict | None:
    """A count that still holds: local shards must have the size they were counted at."""
    for entry in (index.get(shard_name(url)), known.get(url)):
        if entry is None:
            continue
        path = local_path(url)
        if path is not None:
            try:
                if entry.get("bytes") != os.path.getsize(path):
                    continue
            except OSError:
                return None  # gone: counting it names the error
        return entry
    return None


def _count_all(urls: list[str], key: str, timeout_s: float, total: int) -> dict[str, dict | BaseException]:
    """Count shards in parallel daemon threads (a read blocked in the kernel cannot be cancelled; it is
    left behind instead of holding the run). Progress every few seconds."""
    results: dict[str, dict | BaseException] = {}
    started: dict[str, float] = {}
    lock, slots = threading.Lock(), threading.Semaphore(PARALLEL)

    def work(url: str) -> None:
        try:
            entry: dict | BaseException = count_shard(url)
        except (OSError, ShardError) as e:
            entry = e
        with lock:
            results.setdefault(url, entry)
        slots.release()

    t0 = last = time.monotonic()
    last_done = 0
    log.info(lf.COUNTING.template, key, len(urls))
    pending = list(urls)
    while True:
        while pending and slots.acquire(blocking=False):
            url = pending.pop(0)
            started[url] = time.monotonic()
            threading.Thread(target=work, args=(url,), name="ae-count", daemon=True).start()
        now = time.monotonic()
        with lock:
            for url, since in started.items():
                if url not in results and timeout_s and now - since > timeout_s:
                    results[url] = TimeoutError(f"no count within {timeout_s:g} s (data.count_timeout_s): "
                                                "the read is stalled (a hung mount or server?)")
                    log.error(lf.COUNT_STALLED.template, url, now - since)
                    slots.release()  # its thread stays blocked; another shard takes the slot
            done = len(results)
        if done == len(urls):
            break
        if now - last >= PROGRESS_EVERY_S:
            last = now
            reading = [u for u in started if u not in results]
            # A line with no shard finished since the last one is a heartbeat, not progress.
            log.info(lf.COUNT_PROGRESS.template, key, done, len(urls), now - t0,
                     reading[0] if reading else "-", extra=HEARTBEAT if done == last_done else None)
            last_done = done
        time.sleep(0.02)
    plain = all(local_path(u) is not None and not is_compressed(u) for u in urls)
    log.info(lf.COUNTED.template, key, len(urls),
             total, "tar header scan" if plain else "reading them", time.monotonic() - t0, INDEX_NAME)
    return results


def sample_counts(urls: list[str], sample_key: str, key: str, known: dict | None = None,
                  timeout_s: float = 0) -> tuple[list[int], dict[str, str]]:
    """Samples holding `sample_key` in each shard, and the problems found as {url: reason}:
    unreadable, stalled, empty, or samples without `sample_key`. A shard with a problem keeps only its
    good samples (none if unreadable); the caller logs the problems. `known` ({url: entry}, e.g. the
    counts of an earlier run) is consulted after the index and receives every new count."""
    known = {} if known is None else known
    cache: dict = {}
    entries: dict[str, dict | BaseException] = {}
    todo = []
    for url in urls:
        entry = _known_entry(url, _load_index(url, cache), known)
        if entry is None:
            todo.append(url)
        else:
            entries[url] = entry
    if todo:
        counted = _count_all(todo, key, timeout_s, len(urls))
        entries.update(counted)
        known.update({u: e for u, e in counted.items() if isinstance(e, dict)})
    counts, problems = [], {}
    ext = sample_key.lower()
    for url in urls:
        entry = entries[url]
        if isinstance(entry, BaseException):
            problems[url] = f"{reason(entry)}; skipped"
            counts.append(0)
            continue
        n = int(entry["exts"].get(ext, 0))
        if entry["samples"] == 0:
            problems[url] = "holds no samples (empty tar); skipped"
        elif n < entry["samples"]:
            problems[url] = f"{entry['samples'] - n} of {entry['samples']} samples have no '{sample_key}' member; " \
                            "those are skipped"
        counts.append(n)
    if sum(counts) == 0:
        first = problems.get(urls[0], "no such member")
        if isinstance(entries[urls[0]], dict):
            first += f"; its samples hold: {', '.join(sorted(entries[urls[0]]['exts'])) or 'nothing'}"
        raise DataError(f"{key}: none of the {len(urls)} shards holds a readable sample with '{sample_key}' "
                        f"(data.sample_key), e.g. {urls[0]}: {first}")
    return counts, problems
