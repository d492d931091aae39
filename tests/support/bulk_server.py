"""A real HTTP file server on 127.0.0.1 for the bulk-history tests.

Serves in-memory files by path with Range support (206 + Content-Range, 416 past the
end), 404 for anything it does not hold, and scripted faults per path: drop the
connection after N body bytes, or answer a status (503) a number of times first.
Every request is recorded (path, Range header) so tests can assert resumes happened.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, list[int]] = {}  # path -> body byte counts to cut at, one per request
        self.fail_with: dict[str, list[int]] = {}  # path -> statuses to answer first
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def put(self, path: str, data: bytes) -> None:
        self.files[path.lstrip("/")] = data

    def requests_for(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path.lstrip("/")]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].lstrip("/")
                rng = self.headers.get("Range")
                with server.lock:
                    server.requests.append((path, rng))
                    fails = server.fail_with.get(path)
                    status = fails.pop(0) if fails else None
                    drops = server.drop_after.get(path)
                    cut = drops.pop(0) if drops else None
                if status is not None:
                    self._send(status, b"injected failure")
                    return
                data = server.files.get(path)
                if data is None:
                    self._send(404, b"not found")
                    return
                start, end = 0, len(data) - 1
                code = 200
                if rng:
                    m = _RANGE.match(rng)
                    if not m:
                        self._send(400, b"bad range")
                        return
                    start = int(m.group(1))
                    if m.group(2):
                        end = min(end, int(m.group(2)))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    code = 206
                body = data[start : end + 1]
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if cut is not None and cut < len(body):
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    @contextmanager
    def running(self) -> Iterator[FileServer]:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        t = threading.Thread(target=self.httpd.serve_forever, name="bulk-file-server", daemon=True)
        t.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            t.join(5)
