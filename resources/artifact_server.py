"""The local artifact store over HTTP, so the Dagster UI can show charts.

The UI renders markdown metadata with react-markdown, whose URL filter turns any `data:`
image into `javascript:void(0)` (only http, https, mailto and tel pass), so an inline base64
preview never shows. An image the UI can load needs an http(s) address: in production that
is whatever serves the S3 prefix (TICKLAKE_ARTIFACTS_URL, e.g. a CloudFront origin); on the
local stack it is this server, a read-only static file server over $TICKLAKE_HOME/artifacts
that `ticklake up` starts, bound to 127.0.0.1. Once it listens it records its URL in
<home>/run/artifacts.json, where the artifact store resource (resources/artifacts.py) and
`ticklake status` find it; it removes the record when stopped.

Plain Python, no Dagster: `python -m resources.artifact_server --root DIR --state FILE`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from runtime.home import TicklakeHome

HOST = "127.0.0.1"
STATE_FILE = "artifacts.json"
#: How often the serving loop wakes up to check for shutdown (seconds); requests are
#: answered immediately regardless, so this only sets the idle wake-ups.
POLL_INTERVAL_S = 5.0


def state_path(home: TicklakeHome) -> Path:
    return home.run_dir / STATE_FILE


def recorded_url(home: TicklakeHome) -> str | None:
    """The URL the running server of `home` recorded, or None."""
    try:
        return str(json.loads(state_path(home).read_text())["url"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def answers(url: str, timeout: float = 3.0) -> bool:
    """The server at `url` answers HTTP (a 404 for a missing key is an answer)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def command(root: Path, state_file: Path, port: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "resources.artifact_server",
        "--root",
        str(root),
        "--state",
        str(state_file),
        "--port",
        str(port),
    ]


class _ReadOnlyFiles(SimpleHTTPRequestHandler):
    """GET/HEAD of files under the root only: no directory listings, no dot files (the
    store's half-written temp files), quiet logs."""

    def list_directory(self, path):
        self.send_error(404, "no listings")

    def send_head(self):
        if any(part.startswith(".") for part in self.path.split("?")[0].split("/") if part):
            self.send_error(404)
            return None
        return super().send_head()

    def end_headers(self):
        # Every key is rewritten in place when its hour is rebuilt: always revalidate.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args):
        pass


def _bind(root: Path, port: int) -> ThreadingHTTPServer:
    handler = partial(_ReadOnlyFiles, directory=str(root))
    try:
        return ThreadingHTTPServer((HOST, port), handler)
    except OSError:
        if port == 0:
            raise
        return ThreadingHTTPServer((HOST, 0), handler)  # the preferred port is taken: any free one


def serve(root: Path, state_file: Path, port: int = 0) -> None:
    """Serve `root` until SIGTERM/SIGINT; `port` is a preference (0: any free port)."""
    root.mkdir(parents=True, exist_ok=True)
    httpd = _bind(root, port)
    url = f"http://{HOST}:{httpd.server_address[1]}"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "root": str(root)}))
    os.replace(tmp, state_file)

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        httpd.serve_forever(poll_interval=POLL_INTERVAL_S)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            if json.loads(state_file.read_text())["pid"] == os.getpid():
                state_file.unlink()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    serve(args.root.resolve(), args.state, args.port)


if __name__ == "__main__":
    main()
