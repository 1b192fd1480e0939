"""A static file server on 127.0.0.1 that honours HTTP Range requests and counts the bytes it
sends: what the remote-ingest tests and benchmark stream NWB files from (stdlib only).

It serves from a process of its own. In the reader's process, a server thread could
collect an old h5py object while the reader, holding h5py's global lock, waits for that
thread's answer: both wait until the request times out (the same deadlock
data_loaders/nwb/remote.py avoids by fetching in the calling thread)."""
from __future__ import annotations

import http.server
import multiprocessing
import os
import re

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer:
    """Serve the files of `root` at http://127.0.0.1:PORT/NAME. `bytes_sent` counts body bytes
    of every GET (HEAD sends none); `requests` counts GETs. Use as a context manager."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process running threads
        self._bytes, self._requests = ctx.Value("q", 0), ctx.Value("q", 0)
        self._ready = ctx.Queue()
        self._proc = ctx.Process(target=_serve, daemon=True,
                                 args=(self.root, self._bytes, self._requests, self._ready))
        self.url = ""

    def __enter__(self):
        self._proc.start()
        self.url = f"http://127.0.0.1:{self._ready.get(timeout=120)}"
        return self

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        self._proc.join(10)

    @property
    def bytes_sent(self) -> int:
        return self._bytes.value

    @property
    def requests(self) -> int:
        return self._requests.value

    def reset(self) -> None:
        for counter in (self._bytes, self._requests):
            with counter.get_lock():
                counter.value = 0


def _serve(root: str, sent, requests, ready) -> None:
    """The server process: bind a free port on 127.0.0.1, report it, serve until killed."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, sent, requests))
    ready.put(httpd.server_address[1])
    httpd.serve_forever()


def _handler(root: str, sent, requests):
    def count(n: int) -> None:
        with sent.get_lock():
            sent.value += n
        with requests.get_lock():
            requests.value += 1

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: tests read counters, not logs
            pass

        def _target(self) -> str | None:
            name = self.path.split("?", 1)[0].lstrip("/")
            path = os.path.join(root, name)
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
            count(len(body))  # before the body: a reader that has it sees it counted
            self.wfile.write(body)

    return Handler
