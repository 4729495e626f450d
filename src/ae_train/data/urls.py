"""Shard URLs: which shards a spec names, and the names of the files beside them.

A spec is a local path (brace pattern, glob, directory, a shard, or a text file listing one shard
per line), or a URL: `file:`, `pipe:CMD` (the command's stdout), `http(s)://` (curl, as webdataset
reads them), `s3://` (boto3, honouring AWS_ENDPOINT_URL, keys and region), `gs://` (gsutil), and any
other scheme webdataset's `gopen` knows. Brace patterns expand on every form; a URL is never taken
for a glob (a presigned URL's `?` is a query). Shards may be gzip-compressed (`.tar.gz`, `.tgz`).

A shard's bytes are opened in source.py (local files) and remote.py (every other scheme), whose
failures are OSError saying why: the HTTP status, a command's exit code and the last line it wrote
to stderr, the S3 error code.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from braceexpand import UnbalancedBracesError, braceexpand

from ..errors import DataError
from .remote import s3_client, s3_reason

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
INDEX_NAME = "ae_index.json"


def is_url(spec: str) -> bool:
    """True for `scheme:...` (pipe:, http://, s3://, ...), false for a local path (also `C:`-less ones)."""
    scheme = spec.split(":", 1)[0] if ":" in spec else ""
    return len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum() and (
        spec.startswith(scheme + "://") or scheme in ("pipe", "file"))


def local_path(url: str) -> str | None:
    """The file a URL reads without a client (a plain path or `file:`), else None."""
    if not is_url(url):
        return url
    if url.startswith("file:"):
        return unquote(urlparse(url).path) if url.startswith("file://") else url[len("file:"):]
    return None


def is_compressed(url: str) -> bool:
    name = url.split("?", 1)[0].rstrip("/").lower()
    return name.endswith((".gz", ".tgz"))


def _is_shard_name(path: str) -> bool:
    return path.split("?", 1)[0].lower().endswith(SHARD_SUFFIXES)


def _looks_like_tar_or_gzip(path: str) -> bool:
    """A gzip stream, or a tar header (ustar magic at 257, or an old-style header with a checksum)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar"


def _expand(spec: str, key: str) -> list[str]:
    try:
        return list(braceexpand(spec))
    except UnbalancedBracesError:
        raise DataError(f"{key}: unbalanced braces in '{spec}' (a pattern is like train-{{000000..000099}}.tar)") \
            from None


def _expand_local(spec: str, key: str) -> list[str]:
    p = Path(spec)
    if p.is_dir():
        # Anything but a directory: a FIFO or device a mount presents is the user's call.
        urls = sorted(str(x) for x in p.iterdir() if not x.is_dir() and _is_shard_name(x.name))
        if not urls:
            raise DataError(f"{key}: directory {spec} holds no shards ({', '.join(SHARD_SUFFIXES)})")
        return urls
    if p.is_file() and not _is_shard_name(spec) and not _looks_like_tar_or_gzip(spec):
        return _read_list(p, key)
    if any(c in spec for c in "*?["):
        urls = sorted(glob.glob(spec))
        if not urls:
            raise DataError(f"{key}: no shards match the glob '{spec}'")
        return urls
    return _expand(spec, key)


def _read_list(p: Path, key: str) -> list[str]:
    """A text file of shards, one per line (`#` comments); relative paths are relative to the file."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{key}: {p} is neither a shard ({', '.join(SHARD_SUFFIXES)}) nor a text file "
                        "listing shards") from None
    urls = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for u in _expand(line, f"{key} ({p})"):
            urls.append(u if is_url(u) or os.path.isabs(u) else str(p.parent / u))
    if not urls:
        raise DataError(f"{key}: shard list {p} is empty")
    return urls


def list_shards(spec: str, key: str) -> list[str]:
    """The shard URLs a spec names, in order. Local shards must exist; remote ones are opened later."""
    try:
        return _list_shards(spec.strip(), key)
    except DataError:
        raise
    except (OSError, ValueError) as e:  # a NUL byte, a name too long, an unreadable list file
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise DataError(f"{key}: cannot use the shard spec {spec.strip()!r}: {why}") from None


def _list_shards(spec: str, key: str) -> list[str]:
    if is_url(spec) and local_path(spec) is None:
        return _expand(spec, key)
    urls = _expand_local(local_path(spec) or spec, key)
    # Anything that exists and is no directory: a FIFO or device a mount presents is the user's call.
    missing = [u for u in urls if local_path(u) is not None
               and (not os.path.exists(local_path(u)) or os.path.isdir(local_path(u)))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{key}: shard not found: {missing[0]}{more}")
    return urls


# ---- Names beside a shard ------------------------------------------------------------------------


def beside(url: str, name: str) -> str | None:
    """The URL of file `name` in the same directory as shard `url` (for `pipe:` the shard's token in
    the command is rewritten), or None when no such place can be named."""
    if url.startswith("pipe:"):
        tokens = url[len("pipe:"):].split(" ")
        for i in range(len(tokens) - 1, -1, -1):
            if _is_shard_name(tokens[i].strip("'\"")):
                quote = tokens[i][0] if tokens[i][:1] in "'\"" else ""
                inner = tokens[i].strip("'\"")
                tokens[i] = quote + inner.rsplit("/", 1)[0] + "/" + name + quote if "/" in inner else quote + name + quote
                return "pipe:" + " ".join(tokens)
        return None
    base, sep, _ = url.split("?", 1)[0].rpartition("/")
    return base + sep + name if sep else name


def shard_name(url: str) -> str:
    """The shard's file name, its key in `ae_index.json`."""
    if url.startswith("pipe:"):
        for tok in reversed(url[len("pipe:"):].split(" ")):
            if _is_shard_name(tok.strip("'\"")):
                return tok.strip("'\"").rsplit("/", 1)[-1]
        return url
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def write_small(url: str, data: bytes) -> None:
    """Write a small file beside shards: a local path, or an S3 object."""
    path = local_path(url)
    if path is not None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    if url.startswith("s3://"):
        parsed = urlparse(url)
        try:
            s3_client().put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data)
        except Exception as e:  # botocore errors: named by code
            raise OSError(s3_reason(e)) from None
        return
    raise OSError(f"cannot write {url}: write it locally (--out) and copy it beside the shards")
