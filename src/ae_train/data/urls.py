"""Shard URLs: which shards a spec names, and a byte stream for each, whatever the scheme.

A spec is a local path (brace pattern, glob, directory, a shard, or a text file listing one shard
per line), or a URL: `file:`, `pipe:CMD` (the command's stdout), `http(s)://` (curl, as webdataset
reads them), `s3://` (boto3, honouring AWS_ENDPOINT_URL, keys and region), `gs://` (gsutil), and any
other scheme webdataset's `gopen` knows. Brace patterns expand on every form; a URL is never taken
for a glob (a presigned URL's `?` is a query). Shards may be gzip-compressed (`.tar.gz`, `.tgz`).

Every opener reports failure as OSError whose text says why: the HTTP status, a command's exit code
and the last line it wrote to stderr, the S3 error code.
"""
from __future__ import annotations

import glob
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from braceexpand import UnbalancedBracesError, braceexpand

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
INDEX_NAME = "ae_index.json"


class DataError(ValueError):
    """Bad data configuration: one line naming the key and the files."""


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


# ---- Opening ---------------------------------------------------------------------------------------


class CommandStream:
    """stdout of a shell command as a binary stream. Its exit status is checked at end of stream: a
    failed command raises OSError with the exit code and its last stderr line (curl's `(22) The
    requested URL returned error: 404`), never a silently short shard."""

    def __init__(self, cmd: str, what: str):
        self.what = what
        self._err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty stderr cannot block the child
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=self._err, bufsize=0)
        self.stream = self.proc.stdout

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n) if n is not None and n >= 0 else self.stream.read()
        if not data and n != 0:
            self._check()
        return data

    def readinto(self, b) -> int:
        n = self.stream.readinto(b)
        if not n:
            self._check()
        return n

    def _check(self) -> None:
        code = self.proc.wait()
        if code != 0:
            self._err.seek(0)
            lines = [ln for ln in self._err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            tail = f": {lines[-1].strip()}" if lines else ""
            raise OSError(f"{self.what} exited with code {code}{tail}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stream.close()
        self._err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def curl_command(url: str) -> str:
    # -f: an HTTP error is an exit code (22) and a message, not an error page read as a shard.
    return f"curl -fsSL --connect-timeout 30 --retry 3 --retry-delay 1 {shlex.quote(url)}"


class _S3Body:
    """boto3's streaming body, its errors as OSError naming the S3 error code."""

    def __init__(self, url: str):
        try:
            import botocore.exceptions  # boto3's own dependency: present exactly when boto3 is
        except ImportError:
            raise OSError("s3:// shards need boto3: pip install 'ae-train[s3]' "
                          "(or read them with `pipe:aws s3 cp s3://bucket/key -`)") from None
        self._errors = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
        parsed = urlparse(url)
        try:
            self.body = _s3_client().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        except self._errors as e:
            raise OSError(_s3_reason(e)) from None

    def read(self, n: int = -1) -> bytes:
        try:
            return self.body.read(n if n is not None and n >= 0 else None)
        except self._errors as e:
            raise OSError(_s3_reason(e)) from None

    def close(self) -> None:
        self.body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_S3: list = []


def _s3_client():
    """One client per process (boto3 reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, ...)."""
    if not _S3 or _S3[0][0] != os.getpid():
        import boto3
        _S3[:] = [(os.getpid(), boto3.session.Session().client("s3"))]
    return _S3[0][1]


def _s3_reason(e: Exception) -> str:
    err = getattr(e, "response", {}).get("Error", {})
    status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    if err:
        return f"S3 {err.get('Code', 'error')}" + (f" (HTTP {status})" if status else "") + \
            (f": {err['Message']}" if err.get("Message") else "")
    return f"S3: {e}"


def open_url(url: str):
    """A binary stream of the shard's bytes (still compressed if it is), by scheme."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "pipe":
        return CommandStream(url[len("pipe:"):], f"pipe command '{url[len('pipe:'):]}'")
    if scheme in ("http", "https"):
        return CommandStream(curl_command(url), "curl")
    if scheme == "s3":
        return _S3Body(url)
    if scheme == "gs":
        return CommandStream(f"gsutil cat {shlex.quote(url)}", "gsutil")
    from webdataset.gopen import gopen  # sftp, scp, hf, ais, ...: webdataset's own openers

    try:
        return gopen(url, "rb")
    except ValueError as e:
        raise OSError(str(e)) from None


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


def read_small(url: str, limit: int = 64 << 20) -> bytes:
    """A whole small file (an index) through the same opener; OSError when it is not there."""
    with open_url(url) as f:
        data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(f"{url}: larger than {limit >> 20} MB")
        rest = f.read()
        return data + rest if rest else data


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
            _s3_client().put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data)
        except Exception as e:  # botocore errors: named by code
            raise OSError(_s3_reason(e)) from None
        return
    raise OSError(f"cannot write {url}: write it locally (--out) and copy it beside the shards")
