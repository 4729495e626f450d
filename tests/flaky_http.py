"""A real HTTP server that fails the way stores do, for tests: run as a subprocess.

    python tests/flaky_http.py --port P --root DIR        serves the files under DIR (Range supported)
    python tests/flaky_http.py --port P --upstream URL    a proxy in front of another server (moto's S3)

Faults, on GET responses that carry a whole file (status 200):
    --cut full       every one is cut halfway: the headers announce the whole length, half the body is
                     sent, then the connection is closed (a ranged GET, status 206, is served whole)
    --cut first      only the first one of each path is cut halfway
    --ignore-range   Range headers are ignored (200, the whole file): a client must read again and skip
    --status-first N the first GET of each path answers status N (503: a busy server)
GET counts per path (`GET /_stats`, JSON) tell a test which requests were made.
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade"}


class Faults:
    def __init__(self, args):
        self.args, self.lock = args, threading.Lock()
        self.gets: dict[str, int] = {}    # GETs per path
        self.whole: dict[str, int] = {}   # 200 responses per path
        self.ranged: dict[str, int] = {}  # 206 responses per path
        self.cut: dict[str, int] = {}     # responses cut halfway per path

    def count(self, table: dict, path: str) -> int:
        with self.lock:
            table[path] = table.get(path, 0) + 1
            return table[path]

    def stats(self) -> bytes:
        with self.lock:
            return json.dumps({"gets": self.gets, "whole": self.whole, "ranged": self.ranged, "cut": self.cut}).encode()


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2)) if m.group(2) else size - 1
    return (start, min(end, size - 1)) if start < size else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real stores (and boto3's pool) use it
    faults: Faults

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_PUT(self) -> None:
        self._proxy_other()

    def do_POST(self) -> None:
        self._proxy_other()

    def do_DELETE(self) -> None:
        self._proxy_other()

    def _serve(self, send_body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        if path == "/_stats":
            return self._send(200, {"Content-Type": "application/json"}, self.faults.stats(), True)
        args = self.faults.args
        n = self.faults.count(self.faults.gets, path) if send_body else 0
        if send_body and args.status_first and n == 1:
            return self._send(args.status_first, {"Content-Type": "text/plain"}, b"busy, try again\n", True)
        rng = None if args.ignore_range else self.headers.get("Range")
        status, headers, body = self._upstream(rng) if args.upstream else self._file(path, rng)
        if status == 206:
            self.faults.count(self.faults.ranged, path)
        cut = False
        if send_body and status == 200:
            whole = self.faults.count(self.faults.whole, path)
            cut = args.cut == "full" or (args.cut == "first" and whole == 1)
        if not cut:
            return self._send(status, headers, body, send_body)
        self.faults.count(self.faults.cut, path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)  # the cut: the rest of the announced body never comes

    def _file(self, path: str, rng: str | None) -> tuple[int, dict, bytes]:
        f = Path(self.faults.args.root) / path.lstrip("/")
        if not f.is_file() or ".." in Path(path).parts:
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        data = f.read_bytes()
        span = _range(rng, len(data))
        if span is None:
            return 200, {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}, data
        a, b = span
        return 206, {"Content-Type": "application/octet-stream", "Content-Range": f"bytes {a}-{b}/{len(data)}"}, \
            data[a:b + 1]

    def _upstream(self, rng: str | None, method: str | None = None, body: bytes | None = None) -> tuple[int, dict, bytes]:
        up = urlparse(self.faults.args.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP and k.lower() != "range"}
        if rng:
            headers["Range"] = rng
        conn.request(method or self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        out = {k: v for k, v in resp.getheaders() if k.lower() not in HOP}
        conn.close()
        return resp.status, out, data

    def _proxy_other(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if not self.faults.args.upstream:
            return self._send(405, {}, b"", True)
        status, headers, data = self._upstream(self.headers.get("Range"), self.command, body)
        self._send(status, headers, data, True)

    def _send(self, status: int, headers: dict, body: bytes, send_body: bool) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--root")
    src.add_argument("--upstream")
    ap.add_argument("--cut", choices=("none", "full", "first"), default="none")
    ap.add_argument("--ignore-range", action="store_true")
    ap.add_argument("--status-first", type=int, default=0)
    args = ap.parse_args()
    Handler.faults = Faults(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
