"""A loopback HTTP server for model-download tests: serves generated files with ``Range`` /
``If-Range`` support, and can cut a connection, stall, or answer an error status on demand.
Nothing here reaches outside the machine."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    body: bytes
    status: int = 200  # e.g. 404
    cut_after: list[int] = field(default_factory=list)  # per request, in order: close after N bytes
    fail_after_cuts: list[int] = field(default_factory=list)  # statuses answered after the cuts
    stall_s: float = 0.0  # wait this long before answering
    ranges: bool = True  # honour Range requests
    length: bool = True  # send Content-Length (else the body ends when the connection closes)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    sent: int = 0


class ModelServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                server._answer(self)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, body: bytes, **kwargs: object) -> Served:
        served = Served(body, **kwargs)  # type: ignore[arg-type]
        self.files[path] = served
        return served

    def requests_for(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        record = Request(handler.path, {k.lower(): v for k, v in handler.headers.items()})
        with self._lock:
            self.requests.append(record)
            served = self.files.get(handler.path)
            cut = served.cut_after.pop(0) if served and served.cut_after else None
            late_status = (
                served.fail_after_cuts.pop(0)
                if served and cut is None and served.fail_after_cuts
                else None
            )
        if served is None or served.status != 200 or late_status:
            status = late_status or (served.status if served else 404)
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if served.stall_s:
            time.sleep(served.stall_s)
        body, start = served.body, 0
        wanted = record.headers.get("range")
        if_range = record.headers.get("if-range")
        if wanted and served.ranges and (if_range is None or if_range == served.etag):
            start = int(wanted.removeprefix("bytes=").split("-", 1)[0])
            if start >= len(body):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(body)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            handler.send_response(200)
        part = body[start:]
        if served.length:
            handler.send_header("Content-Length", str(len(part)))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.send_header("ETag", served.etag)
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if cut is not None:
            part = part[:cut]
        with contextlib.suppress(OSError):
            for offset in range(0, len(part), 64 * 1024):
                handler.wfile.write(part[offset : offset + 64 * 1024])
                record.sent += len(part[offset : offset + 64 * 1024])
            handler.wfile.flush()
        if cut is not None:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(2)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a client hanging up mid-answer is what some tests do


@contextlib.contextmanager
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
