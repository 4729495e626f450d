"""What a run resolves once about its data, before any rank reads it: for each split, the shard URLs,
their sample counts and problems, and what one sample's input is (shape, dtype) from the first sample.

The launcher resolves it (or rank 0 under torchrun/srun) and hands it to every rank in a JSON file
named by $AE_TRAIN_SHARD_COUNTS, so no rank lists, counts or probes shards again. The model config is
checked against the data here: a missing member, an undecodable sample or a width that disagrees is
one DataError line naming the shard, the member and what the data holds.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field

from .. import logformat as lf
from ..config import Config, ConfigError, DataConfig, ModelConfig
from .decode import SampleSpec, decode, decoder_of, spec_of
from .remote import set_retry_policy
from .shards import COUNTS_ENV, DataError, error_limit, list_shards, reading, reason, sample_counts
from .stream import open_samples
from .tario import ShardError

log = logging.getLogger(__name__)
SPLITS = ("train_shards", "val_shards")
PROBE_SHARDS = 16  # shards tried for a first sample before the split is called unreadable


@dataclass
class Split:
    urls: list[str]
    counts: list[int]
    problems: dict[str, str]
    spec: SampleSpec
    spec_from: str = ""  # the shard the spec was read from


@dataclass
class DataFacts:
    splits: dict[str, Split] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({name: {"urls": s.urls, "counts": s.counts, "problems": s.problems,
                                  "spec": s.spec.to_dict(), "spec_from": s.spec_from}
                           for name, s in self.splits.items()})

    @classmethod
    def from_json(cls, text: str) -> "DataFacts":
        return cls({name: Split(s["urls"], s["counts"], s["problems"], SampleSpec.from_dict(s["spec"]),
                                s.get("spec_from", "")) for name, s in json.loads(text).items()})

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str) -> "DataFacts":
        with open(path) as f:
            return cls.from_json(f.read())


def _with_timeout(fn, timeout_s: float, what: str):
    """fn() in a daemon thread; TimeoutError naming `what` when it does not return in time (a read
    blocked in the kernel cannot be cancelled: the thread is left behind, the run goes on)."""
    box: list = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:  # handed to the caller
            box.append((False, e))

    t = threading.Thread(target=run, name="ae-probe", daemon=True)
    t.start()
    t.join(timeout_s or None)
    if not box:
        raise TimeoutError(f"no answer within {timeout_s:g} s while {what} (data.count_timeout_s)")
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _first_sample(url: str, sample_key: str, key: str) -> SampleSpec:
    decoder = decoder_of(sample_key)
    seen: set[str] = set()
    with reading(url):
        stream, samples = open_samples(url, {sample_key})
    try:
        for sample_name, parts in samples:
            seen.update(parts)
            data = parts.get(sample_key)
            if data is None:
                continue
            try:
                return spec_of(decoder, decode(decoder, data))
            except ShardError as e:
                raise ShardError(f"sample {sample_name}: member '{sample_key}' does not decode: {e}") from None
    finally:
        stream.close()
    held = ", ".join(sorted(seen)) or "nothing"
    raise DataError(f"{key}: no sample of {url} holds a '{sample_key}' member (data.sample_key); "
                    f"its samples hold: {held}")


def probe(urls: list[str], sample_key: str, key: str, timeout_s: float) -> tuple[SampleSpec, str]:
    """The spec of the first sample of the first readable shard (of the first few)."""
    try:
        decoder_of(sample_key)
    except ValueError as e:
        raise ConfigError(f"data.sample_key: {e}") from None
    errors = []
    for url in urls[:PROBE_SHARDS]:
        try:
            return _with_timeout(lambda: _first_sample(url, sample_key.lower(), key), timeout_s,
                                 f"reading the first sample of {url}"), url
        except (OSError, ShardError) as e:  # this shard's fault: its readers report it; try the next
            errors.append(f"{url}: {reason(e)}")
            log.warning(lf.NO_FIRST_SAMPLE.template, key, url, reason(e))
    raise DataError(f"{key}: no first sample can be read ({len(errors)} shard(s) tried); {errors[0]}")


def fit_model(model: ModelConfig, spec: SampleSpec, where: str) -> None:
    """Fill model.input_dim / model.input_shape from the data, or check the values the config set."""
    holds = f"{where} holds {spec.describe()}"
    if model.arch == "conv" and len(spec.shape) not in (2, 3):
        raise ConfigError(f"model.arch=conv needs images (C x H x W); {holds}")
    shape = [1, *spec.shape] if model.arch == "conv" and len(spec.shape) == 2 else list(spec.shape)
    if model.input_shape and [int(d) for d in model.input_shape] != shape:
        raise ConfigError(f"model.input_shape is {'x'.join(map(str, model.input_shape))} but {holds}")
    if model.input_dim and model.input_dim != spec.size:
        raise ConfigError(f"model.input_dim is {model.input_dim} but {holds}")
    model.input_dim, model.input_shape = spec.size, shape


def resolve(cfg: Config, known: dict | None = None, listed: dict[str, list[str]] | None = None) -> DataFacts:
    """List, count and probe every split; check the model against the data. Raises DataError /
    ConfigError with one line; logs unreadable shards as ERROR (they are left out of the plan)."""
    data: DataConfig = cfg.data
    set_retry_policy(data.read_retries, data.read_retry_backoff_s)
    facts = DataFacts()
    for name in SPLITS:
        spec_text = getattr(data, name)
        if not spec_text.strip():
            continue
        key = f"data.{name}"
        urls = (listed or {}).get(name) or list_shards(spec_text, key)
        log.info(lf.LISTED.template, key, len(urls), urls[0])
        counts, problems = sample_counts(urls, data.sample_key, key, known, data.count_timeout_s)
        limit = error_limit(data.max_shard_errors, len(urls))
        if len(problems) > limit:
            url, why = next(iter(problems.items()))
            raise DataError(f"{key}: {len(problems)} of {len(urls)} shards cannot be used, over the limit of {limit} "
                            f"(data.max_shard_errors={data.max_shard_errors:g}); first: {url}: {why}")
        good = [u for u, n in zip(urls, counts) if n > 0]
        log.info(lf.PROBING.template, key)
        spec, src = probe(good, data.sample_key, key, data.count_timeout_s)
        log.info(lf.PROBED.template, key, sum(counts), data.sample_key,
                 spec.describe(), src)
        facts.splits[name] = Split(urls, counts, problems, spec, src)
    train = facts.splits["train_shards"]
    val = facts.splits.get("val_shards")
    if val is not None and (val.spec.shape != train.spec.shape or val.spec.dtype != train.spec.dtype):
        raise DataError(f"data.val_shards holds {val.spec.describe()} per sample ({val.spec_from}), "
                        f"data.train_shards {train.spec.describe()} ({train.spec_from})")
    fit_model(cfg.model, train.spec, f"member '{data.sample_key}' of {train.spec_from}")
    return facts


def facts_for_rank(cfg: Config) -> DataFacts:
    """What the launcher (or rank 0) resolved, else resolved here (a single process)."""
    path = os.environ.get(COUNTS_ENV)
    if path and os.path.isfile(path):
        return DataFacts.load(path)
    return resolve(cfg)
