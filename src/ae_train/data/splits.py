"""What a run resolves once about its data, before any rank reads it: for each split, the shard URLs,
their sample counts and problems, and what one sample's input is (shape, dtype) from the first sample.

The launcher resolves it (or rank 0 under torchrun/srun) and hands it to every rank in a JSON file
named by $AE_TRAIN_SHARD_COUNTS, so no rank lists, counts or probes shards again. The model config is
checked against the data here: a missing member, an undecodable sample or a width that disagrees is
one DataError line naming the shard, the member and what the data holds. Images with `data.image_size`
take the configured shape (the first sample must decode to it); without it the first few samples'
headers must agree in size and mode, or the line names `data.image_size`.
"""
from __future__ import annotations

import io
import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace

import numpy as np

from .. import logformat as lf
from ..config import Config, DataConfig, ModelConfig
from ..errors import ConfigError
from . import preprocess
from .decode import SampleSpec, decode, decode_into, decoder_of, spec_of
from .remote import set_retry_policy
from .shards import COUNTS_ENV, DataError, error_limit, list_shards, reading, reason, sample_counts
from .stream import open_samples
from .tario import ShardError

log = logging.getLogger(__name__)
SPLITS = ("train_shards", "val_shards")
PROBE_SHARDS = 16  # shards tried for a first sample before the split is called unreadable
PROBE_IMAGES = 16  # with data.image_size unset: samples whose image headers must agree with the first one's


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


def image_spec(data: DataConfig, training: bool) -> SampleSpec | None:
    """The spec `data.image_size` makes (None when unset): C x H x W uint8, augmented in training only."""
    hw = preprocess.size_hw(data.image_size)
    if hw is None:
        return None
    return SampleSpec((preprocess.CHANNELS[data.image_mode], *hw), "uint8", "image", hw, data.image_mode,
                      training and data.random_crop, training and data.random_flip)


def _stored_shape(data: bytes) -> tuple[tuple[int, ...], str] | None:
    """(C, H, W) an image member decodes to as stored (decode._image's rule) and its mode, from its
    header alone; None when the header does not read (its reader reports the sample)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # Pillow raises many types; the reader names the sample when it decodes it
        return None
    return ({"L": 1, "RGBA": 4}.get(img.mode, 3), img.size[1], img.size[0]), img.mode


def _first_sample(url: str, sample_key: str, key: str, wanted: SampleSpec | None = None,
                  flip: bool = False) -> SampleSpec:
    """The spec of the first sample holding `sample_key`: `wanted` (data.image_size) once the sample
    decodes to it; else what it holds, and for images as stored the next samples must agree."""
    decoder = decoder_of(sample_key)
    seen: set[str] = set()
    spec, first, checked = None, "", 0
    with reading(url):
        stream, samples = open_samples(url, {sample_key})
    try:
        for sample_name, parts in samples:
            seen.update(parts)
            data = parts.get(sample_key)
            if data is None:
                continue
            if spec is not None:  # images as stored: compare headers only
                got = _stored_shape(data)
                if got is not None and got[0] != spec.shape:
                    raise DataError(
                        f"{key}: images differ in size or mode: sample {first} of {url} is image "
                        f"{'x'.join(map(str, spec.shape))}, sample {sample_name} image {'x'.join(map(str, got[0]))} "
                        f"({got[1]}); set data.image_size (e.g. --data.image_size=64) to resize and crop every "
                        f"image to one size, converted to data.image_mode (RGB or L)")
                checked += 1
                if checked >= PROBE_IMAGES:
                    break
                continue
            try:
                if wanted is not None:
                    decode_into(wanted, data, np.empty(wanted.shape, np.uint8))
                    return wanted
                spec, first = spec_of(decoder, decode(decoder, data)), sample_name
            except ShardError as e:
                raise ShardError(f"sample {sample_name}: member '{sample_key}' does not decode: {e}") from None
            if decoder != "image":
                return spec
    finally:
        stream.close()
    if spec is not None:
        return replace(spec, random_flip=flip)
    held = ", ".join(sorted(seen)) or "nothing"
    raise DataError(f"{key}: no sample of {url} holds a '{sample_key}' member (data.sample_key); "
                    f"its samples hold: {held}")


def probe(urls: list[str], sample_key: str, key: str, timeout_s: float,
          data: DataConfig | None = None) -> tuple[SampleSpec, str]:
    """The spec of the first sample of the first readable shard (of the first few); `data` brings the
    image keys (data.image_size, ...), applied to the training split only where they augment."""
    try:
        decoder = decoder_of(sample_key)
    except ValueError as e:
        raise ConfigError(f"data.sample_key: {e}") from None
    training = key == "data.train_shards"
    wanted = image_spec(data, training) if data is not None else None
    flip = data is not None and training and data.random_flip
    if decoder != "image" and data is not None and (data.image_size or data.random_flip):
        which = "data.image_size" if data.image_size else "data.random_flip"
        raise ConfigError(f"{which} is for images; data.sample_key={sample_key} members hold arrays")
    errors = []
    for url in urls[:PROBE_SHARDS]:
        try:
            return _with_timeout(lambda: _first_sample(url, sample_key.lower(), key, wanted, flip), timeout_s,
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
        spec, src = probe(good, data.sample_key, key, data.count_timeout_s, data)
        log.info(lf.PROBED.template, key, sum(counts), data.sample_key,
                 spec.describe(), src)
        facts.splits[name] = Split(urls, counts, problems, spec, src)
    train = facts.splits["train_shards"]
    val = facts.splits.get("val_shards")
    if val is not None and (val.spec.shape != train.spec.shape or val.spec.dtype != train.spec.dtype):
        hint = "; set data.image_size to make every image one size" if train.spec.decoder == "image" else ""
        raise DataError(f"data.val_shards holds {val.spec.describe()} per sample ({val.spec_from}), "
                        f"data.train_shards {train.spec.describe()} ({train.spec_from}){hint}")
    fit_model(cfg.model, train.spec, f"member '{data.sample_key}' of {train.spec_from}")
    return facts


def facts_for_rank(cfg: Config) -> DataFacts:
    """What the launcher (or rank 0) resolved, else resolved here (a single process)."""
    path = os.environ.get(COUNTS_ENV)
    if path and os.path.isfile(path):
        return DataFacts.load(path)
    return resolve(cfg)
