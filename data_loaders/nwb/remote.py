"""Open an NWB file behind an https:// or s3:// URI as a seekable file that h5py reads in place.

Why: a Neuropixels session on DANDI is tens of GB, and ingest needs its small tables plus
the spike times of the selected units. h5py reads through a Python file object, and every
read becomes a ranged request for the blocks it touches (fsspec's block cache, pure Python), so only the
HDF5 metadata, the small tables and the spike-time ranges of the selected units travel.

- http(s): ranged GETs (urllib, in the calling thread); the server must honour Range
  requests and report the file's size. user:password@ in the URL becomes basic auth; query options (a presigned
  URL's signature) stay in the URL that is fetched and are left out of everything recorded.
- s3:// (gs://, ...): pyarrow's filesystem from mrlfads.data_loaders.fs (MRLFADS_S3_ENDPOINT and the
  AWS_* variables), read at offsets through the same block cache. KEY:SECRET@ in the URI is
  used for this file only.

`display(uri)` is the URI with its credentials removed: the only form that goes into error
messages and the dataset's provenance.
"""
from __future__ import annotations

import io
import os
import posixpath
from urllib.parse import urlsplit

from mrlfads.data_loaders.errors import IngestError

HTTP_SCHEMES = ("http", "https")
STORE_SCHEMES = ("s3", "gs", "gcs")
BLOCK_SIZE = 1 << 17  # bytes per cached ranged request: HDF5 metadata reads are small and
# scattered; 128 KiB read fewer bytes than 512 KiB for as many requests (docs/PERFORMANCE.md)
MAX_BLOCKS = 256      # blocks kept in memory per open file (32 MiB)
TIMEOUT_S = 60  # seconds without an answer before a request fails
DIRECT = 4 * BLOCK_SIZE  # a read this large (spike times) is one request, past the cache
FIX = ("check the URL (a DANDI asset streams from "
       "https://api.dandiarchive.org/api/assets/ASSET_ID/download/), or download the file "
       "and ingest the local copy")


def is_remote(path: str | os.PathLike) -> bool:
    return urlsplit(os.fspath(path)).scheme.lower() in HTTP_SCHEMES + STORE_SCHEMES


def display(path: str | os.PathLike) -> str:
    """What may be shown or recorded of `path`: a remote URI without its credentials."""
    from mrlfads.tracking.redact import redact_uri  # stdlib only: the one place secrets are removed

    text = os.fspath(path)
    return redact_uri(text) if is_remote(text) else text


def default_name(uri: str) -> str:
    """A dataset name from the URI's last path segment (DANDI's '.../download/' skipped)."""
    parts = [p for p in urlsplit(display(uri)).path.split("/") if p and p != "download"]
    return posixpath.splitext(parts[-1])[0] if parts else "remote"


class _BlockFile(io.RawIOBase):
    """Read-only seekable file over fetch(start, end) -> bytes: small reads go through an
    LRU block cache, large ones (a block of units' spike times) are one request each."""

    def __init__(self, fetch, size: int):
        from fsspec.caching import BlockCache

        self.size = size
        self._fetch = fetch
        self._cache = BlockCache(BLOCK_SIZE, fetch, size, maxblocks=MAX_BLOCKS)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer) -> int:
        end = min(self._pos + len(buffer), self.size)
        if end <= self._pos:
            return 0
        if end - self._pos >= DIRECT:
            data = self._fetch(self._pos, end)
        else:
            data = self._cache._fetch(self._pos, end)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def open_remote(uri: str) -> tuple[object, int]:
    """(file object for h5py, size in bytes) of the remote file at `uri`; IngestError if it
    cannot be reached, is missing, or cannot be read by ranges."""
    from mrlfads.tracking.redact import redact_text

    shown = display(uri)
    scheme = urlsplit(uri).scheme.lower()
    try:
        if scheme in HTTP_SCHEMES:
            return _open_http(uri, shown)
        return _open_store(uri, shown)
    except IngestError:
        raise
    except FileNotFoundError:
        raise IngestError(f"{shown}: no file at this URL (not found); {FIX}") from None
    except Exception as e:
        raise IngestError(f"{shown}: cannot open it remotely ({type(e).__name__}: "
                          f"{redact_text(str(e))}); {FIX}") from None


def _open_http(uri: str, shown: str) -> tuple[object, int]:
    """Ranged GETs with the standard library, in the calling thread: h5py holds its global
    lock while it reads, so a fetch must not wait on another thread (an event loop's), where
    garbage collection of an old h5py object would wait on that lock: a deadlock."""
    import base64
    import urllib.error
    import urllib.request

    parts = urlsplit(uri)
    headers = {"Accept-Encoding": "identity"}
    if parts.username is not None:  # basic auth from the URL, which is fetched without it
        token = f"{parts.username}:{parts.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        uri = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()

    def request(method: str, extra: dict | None = None):
        try:
            return urllib.request.urlopen(urllib.request.Request(
                uri, method=method, headers={**headers, **(extra or {})}), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise FileNotFoundError(shown) from None
            raise IngestError(f"{shown}: the server answered HTTP {e.code} {e.reason}; {FIX}") from None

    with request("HEAD") as r:
        size = int(r.headers.get("Content-Length") or 0)
    if not size:
        raise IngestError(f"{shown}: the server does not report the file's size, so it cannot be "
                          f"read by ranges; {FIX}")

    def fetch(start: int, end: int) -> bytes:
        with request("GET", {"Range": f"bytes={start}-{end - 1}"}) as r:
            if r.status != 206:
                raise IngestError(f"{shown}: the server ignores HTTP Range requests, so the file "
                                  "cannot be streamed; download it and ingest the local copy")
            return r.read()

    return _BlockFile(fetch, size), size


def _open_store(uri: str, shown: str) -> tuple[object, int]:
    import pyarrow.fs as pafs

    from mrlfads.data_loaders import fs as dfs
    from mrlfads.tracking.redact import split_credentials

    clean, found = split_credentials(uri)
    if found:  # KEY:SECRET@bucket: for this file only, never through the environment
        endpoint = dfs.s3_endpoint()
        extra = {}
        if endpoint:
            e = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            extra = {"endpoint_override": e.netloc, "scheme": e.scheme or "http"}
        fs = pafs.S3FileSystem(
            access_key=found.get("user") or found.get("access_key"),
            secret_key=found.get("password") or found.get("secret_key"),
            session_token=found.get("session_token"),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            **extra)
        parts = urlsplit(clean)
        path = parts.netloc + parts.path
    else:
        fs, path = dfs.resolve(clean)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise IngestError(f"{shown}: no file at this URI (not found); check the bucket and key, "
                          "and MRLFADS_S3_ENDPOINT / AWS_* credentials for a private store")
    handle = fs.open_input_file(path)
    size = int(info.size)
    return _BlockFile(lambda start, end: handle.read_at(end - start, start), size), size
