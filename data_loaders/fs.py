"""Turn a dataset location (local path or s3:// gs:// hdfs:// URI) into a pyarrow filesystem.

S3-compatible servers (MinIO, moto, Ceph) are reached by setting an endpoint in the
environment, checked in this order: MRLFADS_S3_ENDPOINT, AWS_ENDPOINT_URL_S3,
AWS_ENDPOINT_URL (e.g. "http://127.0.0.1:9000"; the scheme picks http/https). Credentials
come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (else pyarrow's default chain) and the
region from AWS_REGION / AWS_DEFAULT_REGION (else us-east-1). Without an endpoint, a URI is
handed to pyarrow.fs.FileSystem.from_uri unchanged (query options like ?endpoint_override=
work there too).
"""
from __future__ import annotations

import os
import posixpath
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mrlfads.data_loaders.errors import DatasetError

ENDPOINT_VARS = ("MRLFADS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def is_remote(uri: str) -> bool:
    return urlparse(str(uri)).scheme in REMOTE_SCHEMES


def s3_endpoint() -> str | None:
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def _s3_with_endpoint(endpoint: str) -> pafs.S3FileSystem:
    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    kwargs = {}
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs = {"access_key": os.environ["AWS_ACCESS_KEY_ID"],
                      "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"],
                      "session_token": os.environ.get("AWS_SESSION_TOKEN")}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme or "http",
                             region=region, **kwargs)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for `uri`; local paths become absolute."""
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = parsed.path if parsed.scheme == "file" else text
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if parsed.scheme == "s3" and s3_endpoint() and not parsed.query:
        path = (parsed.netloc + parsed.path).rstrip("/")
        return _s3_with_endpoint(s3_endpoint()), path
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError, ImportError) as e:
        raise DatasetError(f"{text}: cannot open this location through pyarrow.fs ({e}); "
                           "check the URI scheme and credentials") from None
    return fs, path.rstrip("/")


def join(*parts: str) -> str:
    return posixpath.join(*parts)


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def inside(fs: pafs.FileSystem, root: str, path: str) -> bool:
    """Whether `path` stays under `root` once resolved: symlinks locally, '.' and '..' on
    object stores (which have no links). Guards every read and delete a manifest names."""
    if is_local(fs):
        real_root = os.path.realpath(root)
        return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root
    return posixpath.normpath(path).startswith(root.rstrip("/") + "/")
