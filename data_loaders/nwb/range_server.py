"""A static file server on 127.0.0.1 that honours HTTP Range requests and counts the bytes it
sends: what the remote-ingest tests and benchmark stream NWB files from (stdlib only)."""
from __future__ import annotations

import http.server
import os
import re
import threading

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer:
    """Serve the files of `root` at http://127.0.0.1:PORT/NAME. `bytes_sent` counts body bytes
    of every GET (HEAD sends none); `requests` counts GETs. Use as a context manager."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.bytes_sent = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.bytes_sent = self.requests = 0

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n
            self.requests += 1

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: tests read counters, not logs
                pass

            def _target(self) -> str | None:
                name = self.path.split("?", 1)[0].lstrip("/")
                path = os.path.join(server.root, name)
                return path if name and "/" not in name and os.path.isfile(path) else None

            def do_HEAD(self) -> None:
                path = self._target()
                if path is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(os.path.getsize(path)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:
                path = self._target()
                if path is None:
                    self.send_error(404)
                    return
                size = os.path.getsize(path)
                start, end = 0, size - 1
                m = _RANGE.match(self.headers.get("Range", ""))
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        return
                with open(path, "rb") as f:
                    f.seek(start)
                    body = f.read(end - start + 1)
                self.send_response(206 if m else 200)
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(body)
                server._count(len(body))

        return Handler
