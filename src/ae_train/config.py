"""One dataclass tree for the whole run: defaults here, then a YAML file, then `--key=value` flags.

CLI beats file beats defaults. Every key is type-checked; an unknown key or a wrong type raises
ConfigError (errors.py) naming the key and where it came from (the file or the flag), before any rank
starts. Which checkpoint a run resumes from is checkpoint_files.resume_path's to say.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .lightning_args import check_trainer_key


@dataclass
class DataConfig:
    train_shards: str = "data/demo/train-{000000..000007}.tar"
    """Training shards: a brace pattern (`data/train-{000000..000099}.tar`), a glob, a directory of
    shards, a text file listing one per line, or URLs: `pipe:CMD`, `http(s)://`, `s3://`, `file:`
    (brace patterns expand on every form). Shards are `.tar`, `.tar.gz` or `.tgz`."""
    val_shards: str = "data/demo/val-{000000..000001}.tar"
    """Validation shards, same forms as train_shards; empty string disables validation."""
    sample_key: str = "x.npy"
    """Member extension of each sample's input (`x.npy` for `<key>.x.npy`; `png`, `jpg`, `pth`, ...);
    its last part picks the decoder. Other members (`.cls`, `.txt`) are not trained on."""
    batch_size: int = 256
    """Samples per batch per rank."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 reads in the rank's main process)."""
    shuffle: bool = True
    """Reshuffle shard order (and samples inside each shard) every epoch from seed + epoch."""
    max_shard_errors: float = 0.1
    """Unreadable shards tolerated per epoch: a fraction of the epoch's shards when below 1, else a count."""
    buffer_mb: int = 256
    """Local uncompressed `.npy` shards up to this size are read whole into memory (the fast
    path; a worker holds two: one read, one read ahead). Larger shards, and every remote or
    compressed one, are streamed."""
    ring_slots: int = -1
    """Batches cross from DataLoader workers through a ring of this many reused shared-memory slots
    per worker (-1, the default: prefetch factor + 3); 0: the DataLoader's own per-batch hand-over
    (a new shared-memory segment, a pickle and a queue round trip per batch)."""
    shuffle_buffer: int = 1000
    """Streamed shards are shuffled through a buffer of this many samples (raw, undecoded members)."""
    count_timeout_s: int = 300
    """A shard whose sample count (or first sample) does not arrive in this many seconds is given up
    on like an unreadable one (a hung mount, a stalled server)."""
    image_size: list[int] = field(default_factory=list)
    """Images: the size every image is made (an int for a square, or `[H, W]`; flag `64` or `64,48`):
    the shorter side resized with antialiasing to cover it, then the centre cropped (JPEGs decoded at a
    reduced scale first). Empty: images as stored, which must then all share one size and mode."""
    image_mode: str = "RGB"
    """Images, with data.image_size: `RGB` (3 channels) or `L` (1, grey); every image (grey, CMYK,
    palette, RGBA, 16-bit) is converted to it."""
    random_crop: bool = False
    """Training images, with data.image_size: crop at a random place instead of the centre (seeded
    per sample from seed, epoch and sample key). Validation, `evaluate` and `encode` crop the centre."""
    random_flip: bool = False
    """Training images: flip half of them horizontally (seeded per sample from seed, epoch and sample
    key, so a resumed run sees the same augmentation)."""
    read_retries: int = 3
    """A remote read that fails in a way that may pass (connection cut, timeout, HTTP 5xx, S3
    throttling) is retried up to this many times in a row, resuming where the stream broke, with a
    WARNING each time; only then is it a shard error. 0: no retries."""
    read_retry_backoff_s: float = 1.0
    """Seconds before the first retry of a remote read; doubled for each further one (at most 60 s)."""


@dataclass
class ModelConfig:
    arch: str = "mlp"
    """`mlp` (inputs flattened to vectors) or `conv` (C x H x W images: strided convolutions)."""
    input_dim: int = 0
    """Values per input (the flattened length); 0 takes it from the data's first sample, a value
    set here must agree with the data."""
    input_shape: list[int] = field(default_factory=list)
    """Shape of one input (C,H,W for images); empty takes it from the data, a value set must agree."""
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """`conv`: channels of the stride-2 encoder convolutions; the decoder mirrors them."""
    latent_dim: int = 8
    """Width of the bottleneck."""
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])
    """Encoder hidden widths; the decoder mirrors them."""
    activation: str = "gelu"
    """One of relu, gelu, silu, tanh."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps before the cosine decay."""


@dataclass
class TrainerConfig:
    max_epochs: int = 5
    """Epochs to train."""
    devices: str = "auto"
    """Ranks per node: an integer, or `auto` (all GPUs, or 2 CPU ranks where there is no GPU)."""
    accelerator: str = "auto"
    """`auto`, `gpu`/`cuda` or `cpu`."""
    num_nodes: int = 1
    """Nodes in the job."""
    precision: str = "32-true"
    """Lightning precision string (`32-true`, `bf16-mixed`, ...)."""
    gradient_clip_val: float = 1.0
    """Clip the gradient norm to this; 0 disables clipping."""
    ddp_timeout_s: int = 1800
    """Seconds a collective may wait for a lagging rank before the process group gives up."""
    callbacks: list[Any] = field(default_factory=list)
    """Extra Lightning callbacks: dotted paths (`pkg.module.Class`) or `{class_path: pkg.Class,
    init_args: {...}}`, built by the launcher before any rank starts; they run before ae_train's own."""
    logger: list[Any] = field(default_factory=list)
    """Extra Lightning loggers, in the same forms (`pytorch_lightning.loggers.TensorBoardLogger`, ...;
    `save_dir` defaults to output_dir); the CSV logger (metrics/<ts>/metrics.csv) is always on."""
    enable_progress_bar: bool = False
    """A progress bar on rank 0's console when it is a terminal (never in the log files)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other argument of Lightning's Trainer, written `trainer.<name>` (e.g. `trainer.max_steps`,
    `trainer.accumulate_grad_batches`); checked against the installed Lightning's Trainer."""


@dataclass
class LogConfig:
    train_every: int = 500
    """Write a `Training step` line every this many training batches (debug mode)."""
    val_every: int = 20
    """Write a `Validation step` line every this many validation batches (debug mode)."""
    hang_timeout_s: int = 600
    """Seconds without progress before the watchdog writes HANG SUSPECTED and stack dumps."""
    sample_ledger: bool = False
    """Each rank writes logs/samples_rank<N>_<ts>.tsv: a line per trained batch with the epoch, the
    global step and the WebDataset keys of its samples (proof of what was trained; costs a little
    per step, see docs/BENCHMARKS.md)."""


@dataclass
class CheckpointConfig:
    every_n_steps: int = 0
    """Also write checkpoints/last.ckpt every this many optimizer steps (0: at epoch ends only, where
    it is always rewritten); a rank killed without warning then loses at most this many steps."""
    parent_death_grace_s: int = 30
    """Seconds a rank whose launcher (or torchrun/srun agent) died may spend saving last.ckpt before
    it kills itself and its DataLoader workers."""


@dataclass
class Config:
    output_dir: str = "output/ae_demo"
    """Run directory: logs/, checkpoints/, metrics/ and the resolved config.yaml go here."""
    debug: bool = False
    """Per-shard and per-batch lines in the debug logs (DEBUG level); off keeps INFO and up."""
    seed: int = 0
    """Seeds the model init and every epoch's data order (seed + epoch)."""
    resume: str = ""
    """Empty: fresh run; `auto`: continue from checkpoints/last.ckpt if present; or a checkpoint path."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def _yaml_value(text: str, where: str, key: str) -> Any:
    """A flag's text as YAML reads it (`4` an int, `null` None, `[a, b]` a list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: {text!r} is not a valid YAML value ({where})") from None


def _convert(value: Any, typ: Any, where: str, key: str) -> Any:
    """Check (file values) or parse (flag strings) one value against its annotated type."""
    from_flag = isinstance(value, str) and where.startswith("flag")
    origin = typing.get_origin(typ)
    if typ is Any:
        return _yaml_value(value, where, key) if from_flag else value
    if origin is list:
        (item,) = typing.get_args(typ)
        if from_flag and value.strip()[:1] in ("[", "{"):  # a YAML list, or one {class_path: ...} entry
            value = _yaml_value(value, where, key)
            value = [value] if isinstance(value, dict) else value
            from_flag = False
        elif from_flag:
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if item is int and isinstance(value, int) and not isinstance(value, bool):
            value = [value]  # `image_size: 64` in a file: a list of one
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({where})")
        return [_convert(v, item, where if from_flag else where.replace("flag", "value of flag"), key) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if from_flag and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r} ({where})")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_flag:
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r} ({where})")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_flag:
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r} ({where})")
    if typ is str:
        # YAML reads `devices: 2` as an int; str fields accept scalars and keep their text.
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r} ({where})")
    raise TypeError(f"unsupported config type {typ!r} for {key}")


def _fields(obj: Any) -> dict[str, Any]:
    """{field name: resolved type} (annotations are strings under `from __future__ import annotations`)."""
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _set(cfg: Config, dotted: str, value: Any, where: str) -> None:
    obj, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        fields = _fields(obj)
        if isinstance(obj, TrainerConfig) and i == len(parts) - 1 and (part not in fields or part == "extra"):
            check_trainer_key(part, where)  # every other Trainer argument passes through
            obj.extra[part] = _convert(value, Any, where, dotted)
            return
        if part not in fields:
            prefix = ".".join(parts[:i])
            known = ", ".join(sorted((prefix + "." if prefix else "") + k for k in fields))
            raise ConfigError(f"unknown config key '{dotted}' ({where}); known keys here: {known}")
        typ = fields[part]
        if dataclasses.is_dataclass(typ):
            if i == len(parts) - 1:
                raise ConfigError(f"'{dotted}' is a section; set one of its keys ({where})")
            obj = getattr(obj, part)
            continue
        if i != len(parts) - 1:
            raise ConfigError(f"unknown config key '{dotted}' ({where}): '{part}' is not a section")
        setattr(obj, part, _convert(value, typ, where, dotted))


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.extend(_flatten(v, key + ".") if isinstance(v, dict) else [(key, v)])
    return out


def split_config_arg(args: list[str]) -> tuple[str | None, list[str]]:
    """(--config FILE or --config=FILE, the other arguments in order)."""
    path, rest, i = None, [], 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a file path")
            path, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def _pairs(args: list[str]) -> list[tuple[str, str]]:
    """(key, value) of `--key=value` and `--key value` flags, in order."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"bad argument '{arg}': overrides are --key=value or --key value "
                              "(e.g. --data.batch_size=128)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = arg[2:], args[i + 1]
            i += 2
        else:
            raise ConfigError(f"{arg} needs a value: {arg}=VALUE or {arg} VALUE")
        out.append((key, value))
    return out


def load_config(path: str | None, overrides: list[str]) -> Config:
    """Defaults, then the YAML file at `path`, then `--key=value` overrides."""
    cfg = Config()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{at}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        except (ValueError, OverflowError, RecursionError) as e:  # a date like 2026-13-45, nesting too deep
            raise ConfigError(f"config file {path} holds a value YAML cannot read: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys")
        for key, value in _flatten(tree):
            _set(cfg, key, value, f"file {path}")
    for key, value in _pairs(overrides):
        _set(cfg, key, value, f"flag --{key}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks a type cannot express; each names its key."""
    checks = [
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (cfg.data.max_shard_errors >= 0, "data.max_shard_errors must be >= 0"),
        (cfg.model.input_dim >= 0, "model.input_dim must be >= 0 (0: from the data)"),
        (all(d >= 1 for d in cfg.model.input_shape), "model.input_shape must all be >= 1"),
        (cfg.model.arch in ("mlp", "conv"), f"model.arch must be mlp or conv, got '{cfg.model.arch}'"),
        (bool(cfg.model.conv_channels) and all(c >= 1 for c in cfg.model.conv_channels),
         "model.conv_channels must be a non-empty list of values >= 1"),
        (cfg.data.buffer_mb >= 0, "data.buffer_mb must be >= 0"),
        (cfg.data.shuffle_buffer >= 1, "data.shuffle_buffer must be >= 1"),
        (cfg.data.ring_slots == -1 or cfg.data.ring_slots == 0 or cfg.data.ring_slots >= 3,
         "data.ring_slots must be -1 (auto), 0 (off) or >= 3"),
        (cfg.data.count_timeout_s >= 1, "data.count_timeout_s must be >= 1"),
        (len(cfg.data.image_size) <= 2 and all(d >= 1 for d in cfg.data.image_size),
         f"data.image_size must be a size in pixels >= 1 (an int, or [H, W]), got {','.join(map(str, cfg.data.image_size))}"),
        (cfg.data.image_mode in ("RGB", "L"), f"data.image_mode must be RGB or L, got '{cfg.data.image_mode}'"),
        (bool(cfg.data.image_size) or not cfg.data.random_crop, "data.random_crop needs data.image_size (the crop size)"),
        (cfg.data.read_retries >= 0, "data.read_retries must be >= 0"),
        (0 <= cfg.data.read_retry_backoff_s <= 3600, "data.read_retry_backoff_s must be between 0 and 3600"),
        (cfg.model.latent_dim >= 1, "model.latent_dim must be >= 1"),
        (all(h >= 1 for h in cfg.model.hidden_dims), "model.hidden_dims must all be >= 1"),
        (cfg.model.activation in ("relu", "gelu", "silu", "tanh"), "model.activation must be one of relu, gelu, silu, tanh"),
        (cfg.model.lr > 0, "model.lr must be > 0"),
        (cfg.trainer.max_epochs >= 1, "trainer.max_epochs must be >= 1"),
        (cfg.trainer.num_nodes >= 1, "trainer.num_nodes must be >= 1"),
        (cfg.trainer.devices == "auto" or (cfg.trainer.devices.isdigit() and int(cfg.trainer.devices) >= 1),
         f"trainer.devices must be a positive integer or auto, got '{cfg.trainer.devices}'"),
        (cfg.trainer.accelerator in ("auto", "cpu", "gpu", "cuda"), "trainer.accelerator must be auto, cpu, gpu or cuda"),
        (cfg.trainer.ddp_timeout_s >= 1, "trainer.ddp_timeout_s must be >= 1"),
        (cfg.log.train_every >= 1, "log.train_every must be >= 1"),
        (cfg.log.val_every >= 1, "log.val_every must be >= 1"),
        (cfg.log.hang_timeout_s >= 1, "log.hang_timeout_s must be >= 1"),
        (cfg.checkpoint.every_n_steps >= 0, "checkpoint.every_n_steps must be >= 0"),
        (cfg.checkpoint.parent_death_grace_s >= 0, "checkpoint.parent_death_grace_s must be >= 0"),
        (bool(cfg.data.train_shards.strip()), "data.train_shards must not be empty"),
        (bool(cfg.output_dir.strip()), "output_dir must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(cfg: Config) -> dict:
    """The config as YAML writes it: Lightning arguments in `trainer.extra` appear as trainer keys."""
    tree = dataclasses.asdict(cfg)
    tree["trainer"].update(tree["trainer"].pop("extra"))
    return tree


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_docs() -> list[tuple[str, str, Any]]:
    """(key, docstring, default) of every leaf, read from the attribute docstrings above (for --help)."""
    import ast
    import inspect

    docs: dict[str, dict[str, str]] = {}
    tree = ast.parse(inspect.getsource(__import__(__name__, fromlist=["x"])))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body, d = node.body, {}
            for a, b in zip(body, body[1:]):
                if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                    d[a.target.id] = " ".join(str(b.value.value).split())
            docs[node.name] = d

    out: list[tuple[str, str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        for name, typ in _fields(obj).items():
            value = getattr(obj, name)
            if dataclasses.is_dataclass(typ):
                walk(value, prefix + name + ".")
            else:
                out.append((prefix + name, docs.get(type(obj).__name__, {}).get(name, ""), value))

    walk(Config(), "")
    return out



def keys_help() -> str:
    """Every key with its default and meaning, grouped by section (the --help of fit, config and bench-data)."""
    import textwrap

    lines, section = [], None
    for key, doc, default in field_docs():
        if key == "trainer.extra":
            continue
        head = key.split(".", 1)[0] if "." in key else ""
        if head != section:
            section = head
            lines.append(f"\n{head or 'run'}:")
        lines.append(f"  --{key}={default!r}")
        lines += textwrap.wrap(doc, width=100, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines).lstrip("\n") + "\n"
