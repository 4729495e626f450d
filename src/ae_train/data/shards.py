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


def error_limit(max_shard_errors: float, num_shards: int) -> int:
    """data.max_shard_errors as a shard count: a fraction of the split when below 1, else a count."""
    return int(max_shard_errors * num_shards) if max_shard_errors < 1 else int(max_shard_errors)


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
    # Anything that exists and is no directory: a FIFO or device a mount presents is the user's call.
    missing = [u for u in urls if not os.path.exists(u) or os.path.isdir(u)]
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


def sample_counts(urls: list[str], sample_key: str, key: str) -> tuple[list[int], dict[str, str]]:
    """Samples holding `sample_key` in each shard (from the index or a header scan), and the problems
    found on the way as {url: reason}: unreadable, empty, or samples without `sample_key`. A shard
    with a problem keeps only its good samples (none if unreadable); the caller logs the problems."""
    cache: dict = {}
    counts, problems, scanned, t0 = [], {}, 0, time.perf_counter()
    ext = sample_key.lower()
    for url in urls:
        entry = _load_index(os.path.dirname(url) or ".", cache).get(os.path.basename(url))
        try:
            size = os.path.getsize(url)
            if entry is None or entry.get("bytes") != size:
                scanned += 1
                entry = count_file(url)
        except (OSError, ShardError) as e:
            problems[url] = f"{e.strerror if isinstance(e, OSError) and e.strerror else e}; skipped"
            counts.append(0)
            continue
        n = int(entry["exts"].get(ext, 0))
        if entry["samples"] == 0:
            problems[url] = "holds no samples (empty tar); skipped"
        elif n < entry["samples"]:
            problems[url] = f"{entry['samples'] - n} of {entry['samples']} samples have no '{sample_key}' member; those are skipped"
        counts.append(n)
    if scanned:
        log.info("%s: counted %d of %d shards by tar header scan in %.1fs (not in %s; `ae-train index` saves this)",
                 key, scanned, len(urls), time.perf_counter() - t0, INDEX_NAME)
    if sum(counts) == 0:
        raise DataError(f"{key}: none of the {len(urls)} shards holds a readable sample with '{sample_key}' "
                        f"(data.sample_key), e.g. {urls[0]}: {problems.get(urls[0], 'no such member')}")
    return counts, problems
