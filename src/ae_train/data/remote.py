"""Remote shard bytes that outlast a dropped connection: an opener per scheme that can start at a byte
offset, and the retrying stream that every remote read goes through (counting, probing, reading).

A transient failure (the connection cut mid-body, a timeout, HTTP 5xx/408/429, S3 throttling, an S3 5xx
or connection error) is retried up to `data.read_retries` times in a row, after a backoff that doubles,
resuming where the stream broke: an HTTP Range request (`curl -C N`), an S3 ranged GET (`Range:
bytes=N-`), `gsutil cat -r N-`. A `pipe:` command, or a server that refuses ranges, is run again and
the bytes already delivered are skipped. The caller sees one unbroken byte stream; for gzip shards that
is the compressed stream, resumed at the compressed offset, so the caller's decompressor goes on as if
nothing happened. Each retry is a WARNING naming the URL and the retry. What is not transient (404,
403, access denied, a command that is not there) and a failure with no retry left reach the caller as
OSError, whose text says why: the caller reports the shard error.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from .. import logformat as lf

log = logging.getLogger(__name__)
CHUNK = 1 << 20
MAX_BACKOFF_S = 60.0
# curl exit codes of failures that may pass: 7 could not connect, 16/92 HTTP/2 errors, 18 transfer cut
# short, 28 timeout, 35 TLS handshake, 52 empty reply, 55/56 send/receive failed.
CURL_TRANSIENT = frozenset({7, 16, 18, 28, 35, 52, 55, 56, 92})
CURL_RANGE_REFUSED = 33  # `-C N` and the server answered without the range
TRANSIENT_HTTP = frozenset({408, 429})  # and every 5xx
CURL_STATUS = re.compile(r"error:? (\d{3})")  # curl: (22) The requested URL returned error: 503
# Other commands (`pipe:aws s3 cp ...`, gsutil): their last stderr line says whether it may pass.
TRANSIENT_TEXT = re.compile(r"(?i)timed? ?out|connection (?:was )?(?:reset|closed|refused|aborted|broken)|broken pipe|"
                            r"temporar|unavailable|throttl|slow ?down|too many requests|incomplete ?read|"
                            r"\b(?:429|50[0-4])\b")
PERMANENT_TEXT = re.compile(r"(?i)\b(?:40[134])\b|not found|no such|denied|forbidden|nosuch")
S3_TRANSIENT = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestLimitExceeded",
                          "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException", "InternalError",
                          "ServiceUnavailable", "PriorRequestNotComplete", "BandwidthLimitExceeded"})


class TransientError(OSError):
    """A read failure that may pass when tried again (RetryingStream retries it)."""


class RangeRefused(TransientError):
    """The server would not start at an offset: read from the start again and skip instead."""


@dataclass
class RetryPolicy:
    retries: int = 3         # data.read_retries: retries in a row (a retry that delivers bytes starts the count again)
    backoff_s: float = 1.0   # data.read_retry_backoff_s: before the first retry; doubles with each, at most MAX_BACKOFF_S

    def delay(self, retry: int) -> float:
        # Jitter: the workers of many ranks that lost one server must not come back in lockstep.
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (retry - 1)) * random.uniform(0.8, 1.2)


_POLICY = [RetryPolicy()]


def set_retry_policy(retries: int, backoff_s: float) -> None:
    """data.read_retries and data.read_retry_backoff_s for every remote read of this process (and the
    DataLoader workers it forks)."""
    _POLICY[0] = RetryPolicy(retries, backoff_s)


def retry_policy() -> RetryPolicy:
    return _POLICY[0]


# ---- commands (curl, pipe:, gsutil) ----------------------------------------------------------------


def _command_error(program: str, code: int, line: str, message: str) -> OSError:
    """The failure of a command as an OSError, transient or not, by what the program is known to mean."""
    if code < 0:  # killed by a signal from outside
        return TransientError(message)
    if program == "curl":
        if code == CURL_RANGE_REFUSED:
            return RangeRefused(message)
        status = CURL_STATUS.search(line)
        if code in CURL_TRANSIENT or (code == 22 and status and (int(status.group(1)) >= 500
                                                                  or int(status.group(1)) in TRANSIENT_HTTP)):
            return TransientError(message)
        return OSError(message)
    if code not in (126, 127) and TRANSIENT_TEXT.search(line) and not PERMANENT_TEXT.search(line):
        return TransientError(message)
    return OSError(message)


class CommandStream:
    """stdout of a shell command as a binary stream. Its exit status is checked at end of stream: a
    failed command raises OSError with the exit code and its last stderr line (curl's `(22) The
    requested URL returned error: 404`), never a silently short shard; TransientError when `program`
    (the command's first word) is known to mean a failure that may pass."""

    def __init__(self, cmd: str, what: str, program: str = ""):
        self.what, self.program = what, program
        self._err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty stderr cannot block the child
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=self._err, bufsize=0)
        self.stream = self.proc.stdout

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n) if n is not None and n >= 0 else self.stream.read()
        if not data and n != 0:
            self._check()
        return data

    def _check(self) -> None:
        code = self.proc.wait()
        if code != 0:
            self._err.seek(0)
            lines = [ln for ln in self._err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else ""
            raise _command_error(self.program, code, last, f"{self.what} exited with code {code}"
                                 + (f": {last}" if last else ""))

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


def program_of(cmd: str) -> str:
    """The name of a command line's program: `curl` for `curl -s https://...`."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        words = cmd.split()
    return os.path.basename(words[0]) if words else ""


def curl_command(url: str, offset: int = 0) -> str:
    # -f: an HTTP error is an exit code (22) and a message, not an error page read as a shard. No --retry:
    # retries are RetryingStream's, which resumes mid-body. A server silent for 60 s is a timeout (28).
    resume = f" -C {offset}" if offset else ""
    return f"curl -fsSL --connect-timeout 30 --speed-time 60 --speed-limit 1{resume} {shlex.quote(url)}"


# ---- S3 --------------------------------------------------------------------------------------------

_CLIENT: list = []


def s3_client():
    """One client per process (boto3 reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, ...)."""
    if not _CLIENT or _CLIENT[0][0] != os.getpid():
        import boto3
        _CLIENT[:] = [(os.getpid(), boto3.session.Session().client("s3"))]
    return _CLIENT[0][1]


def s3_reason(e: Exception) -> str:
    response = getattr(e, "response", None) or {}  # a body cut short has none
    err, status = response.get("Error", {}), response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if err:
        return f"S3 {err.get('Code', 'error')}" + (f" (HTTP {status})" if status else "") + \
            (f": {err['Message']}" if err.get("Message") else "")
    return f"S3: {e}"


def _s3_error(e: Exception) -> OSError:
    import botocore.exceptions as bx

    if isinstance(e, bx.ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if e.response.get("Error", {}).get("Code") in S3_TRANSIENT or status >= 500 or status in TRANSIENT_HTTP:
            return TransientError(s3_reason(e))
        return OSError(s3_reason(e))
    if isinstance(e, (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError)):
        return TransientError(s3_reason(e))  # connection refused or cut, read timeout, body cut short
    return OSError(s3_reason(e))


class _S3Body:
    """boto3's streaming body from byte `offset` on, its errors as OSError naming the S3 error code."""

    def __init__(self, url: str, offset: int = 0):
        try:
            import botocore.exceptions  # boto3's own dependency: present exactly when boto3 is
        except ImportError:
            raise OSError("s3:// shards need boto3: pip install 'ae-train[s3]' "
                          "(or read them with `pipe:aws s3 cp s3://bucket/key -`)") from None
        self._errors = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
        parsed = urlparse(url)
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            got = s3_client().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), **extra)
        except self._errors as e:
            raise _s3_error(e) from None
        self.body = got["Body"]
        # A store that ignores Range sends the whole object: then the offset is skipped here.
        self.skip = offset if offset and not str(got.get("ContentRange", "")).startswith(f"bytes {offset}-") else 0

    def read(self, n: int = -1) -> bytes:
        try:
            return self.body.read(n if n is not None and n >= 0 else None)
        except self._errors as e:
            raise _s3_error(e) from None

    def close(self) -> None:
        self.body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the sources and the retrying stream -----------------------------------------------------------


class Source:
    """Opens one shard's bytes at an offset: itself when `ranged`, else by reading from the start and
    skipping. Subclasses give `_open(offset)` (ranged) or `_open(0)`."""

    ranged = False
    ranged_how = ""  # how a ranged source starts at an offset, for the WARNING

    def __init__(self, url: str):
        self.url = url

    def open(self, offset: int):
        stream = self._open(offset if self.ranged else 0)
        skip = offset if not self.ranged else getattr(stream, "skip", 0)
        try:
            _skip(stream, skip)
        except BaseException:
            stream.close()
            raise
        return stream

    def resume_text(self, offset: int) -> str:
        if not offset:
            return "reading from the start"
        how = self.ranged_how if self.ranged else "reading again and skipping the bytes already delivered"
        return f"resuming at byte {offset} by {how}"

    def _open(self, offset: int):
        raise NotImplementedError


def _skip(stream, n: int) -> None:
    while n > 0:
        got = len(stream.read(min(n, CHUNK)))
        if not got:
            raise OSError(f"the shard ended {n} bytes before the point already read: it changed while it was read")
        n -= got


class _Curl(Source):
    ranged, ranged_how = True, "an HTTP range request"

    def _open(self, offset: int):
        return CommandStream(curl_command(self.url, offset), "curl", "curl")


class _Command(Source):
    def __init__(self, url: str):
        super().__init__(url)
        self.cmd = url[len("pipe:"):]

    def _open(self, offset: int):
        return CommandStream(self.cmd, f"pipe command '{self.cmd}'", program_of(self.cmd))


class _Gsutil(Source):
    ranged, ranged_how = True, "a ranged read (gsutil cat -r)"

    def _open(self, offset: int):
        rng = f" -r {offset}-" if offset else ""
        return CommandStream(f"gsutil cat{rng} {shlex.quote(self.url)}", "gsutil", "gsutil")


class _S3Object(Source):
    ranged, ranged_how = True, "an S3 ranged GET"

    def _open(self, offset: int):
        return _S3Body(self.url, offset)


class RetryingStream:
    """One shard's bytes, front to back, across transient failures (see the module docstring)."""

    def __init__(self, source: Source):
        self.source, self.url = source, source.url
        self.pos = 0    # bytes handed to the caller
        self.tries = 0  # retries in a row without a byte delivered
        self.raw = None
        self.raw = self._opened(None)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while True:
                part = self.read(CHUNK)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        while True:
            try:
                data = self.raw.read(n)
            except (TransientError, ConnectionError, TimeoutError) as e:
                self.raw = self._opened(e)
                continue
            if data:
                self.pos += len(data)
                self.tries = 0
            return data

    def _opened(self, error: BaseException | None):
        """The source opened at `pos`: at once the first time, after a backoff when retrying `error`."""
        policy = retry_policy()
        while True:
            if error is not None:
                self._drop_raw()
                if isinstance(error, RangeRefused) and self.source.ranged:
                    self.source.ranged = False  # read again and skip from now on: not a retry of its own
                else:
                    if self.tries >= policy.retries:
                        done = f"gave up after {self.tries} retr{'y' if self.tries == 1 else 'ies'}" if self.tries \
                            else "not retried"
                        raise OSError(f"{_text(error)}; {done} (data.read_retries={policy.retries})") from None
                    self.tries += 1
                    delay = policy.delay(self.tries)
                    log.warning(lf.READ_RETRY.template, self.url, self.tries, policy.retries, delay, _text(error),
                                self.source.resume_text(self.pos))
                    time.sleep(delay)
            try:
                return self.source.open(self.pos)
            except (TransientError, ConnectionError, TimeoutError) as e:
                error = e

    def _drop_raw(self) -> None:
        if self.raw is not None:
            try:
                self.raw.close()
            except OSError:
                pass
            self.raw = None

    def close(self) -> None:
        self._drop_raw()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _text(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__


def open_remote(url: str):
    """A binary stream of a remote shard's bytes (still compressed if it is), by scheme: http(s), pipe:,
    s3 and gs through RetryingStream; any other scheme through webdataset's own openers (no retries)."""
    scheme = url.split(":", 1)[0].lower()
    source = {"pipe": _Command, "http": _Curl, "https": _Curl, "s3": _S3Object, "gs": _Gsutil}.get(scheme)
    if source is not None:
        return RetryingStream(source(url))
    from webdataset.gopen import gopen  # sftp, scp, hf, ais, ...

    try:
        return gopen(url, "rb")
    except ValueError as e:
        raise OSError(str(e)) from None
