"""Which shards a split has and how many samples each holds.

Counts come from `ae_index.json` beside the shards (written by `ae-train make-shards` and
`ae-train index`); a shard missing from the index, or whose size changed since, is counted by a scan
of its tar headers, and the log says so. Counts are never guessed: equal batches per rank depend on them.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import time
from pathlib import Path

from braceexpand import braceexpand

from .tario import ShardError, count_file

log = logging.getLogger(__name__)
INDEX_NAME = "ae_index.json"
COUNTS_ENV = "AE_TRAIN_SHARD_COUNTS"  # file of {url: samples} the launcher resolved once for all ranks


class DataError(ValueError):
    """Bad data configuration: one line naming the key and the files."""


def list_shards(spec: str, key: str) -> list[str]:
    """Brace pattern, glob, directory of .tar files, or a text file listing one shard per line."""
    spec = spec.strip()
    p = Path(spec)
    if p.is_dir():
        urls = sorted(str(x) for x in p.glob("*.tar"))
        if not urls:
            raise DataError(f"{key}: directory {spec} holds no .tar shards")
        return urls
    if p.is_file() and not spec.endswith(".tar"):
        base = p.parent
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        urls = [str(base / ln) if not os.path.isabs(ln) else ln for ln in lines]
        if not urls:
            raise DataError(f"{key}: shard list {spec} is empty")
    elif any(c in spec for c in "*?["):
        urls = sorted(glob.glob(spec))
        if not urls:
            raise DataError(f"{key}: no shards match the glob '{spec}'")
        return urls
    else:
        urls = list(braceexpand(spec))
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{key}: shard not found: {missing[0]}{more}")
    return urls


def _load_index(directory: str, cache: dict) -> dict:
    if directory not in cache:
        path = os.path.join(directory, INDEX_NAME)
        try:
            with open(path) as f:
                cache[directory] = json.load(f).get("shards", {})
        except FileNotFoundError:
            cache[directory] = {}
        except (OSError, ValueError) as e:
            log.warning("Ignoring unreadable shard index %s: %s", path, e)
            cache[directory] = {}
    return cache[directory]


def write_index(entries: dict[str, dict]) -> list[str]:
    """Merge {shard path: count entry} into the ae_index.json of each shard's directory."""
    by_dir: dict[str, dict] = {}
    for url, entry in entries.items():
        by_dir.setdefault(os.path.dirname(url) or ".", {})[os.path.basename(url)] = entry
    written = []
    for directory, new in by_dir.items():
        path = os.path.join(directory, INDEX_NAME)
        shards = dict(_load_index(directory, {}))
        shards.update(new)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"version": 1, "shards": dict(sorted(shards.items()))}, f, indent=1)
        os.replace(tmp, path)
        written.append(path)
    return written


def sample_counts(urls: list[str], sample_key: str, key: str) -> list[int]:
    """Samples holding `sample_key` in each shard, from the index or a header scan."""
    cache: dict = {}
    counts, scanned, t0 = [], 0, time.perf_counter()
    for url in urls:
        entry = _load_index(os.path.dirname(url) or ".", cache).get(os.path.basename(url))
        size = os.path.getsize(url)
        if entry is None or entry.get("bytes") != size:
            try:
                entry = count_file(url)
            except ShardError as e:
                # Counted as empty: the plan never assigns it; the reader would only fail on it.
                log.error("Error reading shard %s: %s (skipped for this run)", url, e)
                entry = {"bytes": size, "samples": 0, "exts": {}}
            scanned += 1
        counts.append(int(entry["exts"].get(sample_key.lower(), 0)))
    if scanned:
        log.info("%s: counted %d of %d shards by tar header scan in %.1fs (not in %s; `ae-train index` saves this)",
                 key, scanned, len(urls), time.perf_counter() - t0, INDEX_NAME)
    empty = [u for u, c in zip(urls, counts) if c == 0]
    if empty:
        log.warning("%s: %d shard(s) hold no '%s' samples and are skipped, e.g. %s", key, len(empty), sample_key, empty[0])
    if sum(counts) == 0:
        raise DataError(f"{key}: none of the {len(urls)} shards holds a sample with '{sample_key}' (data.sample_key)")
    return counts
