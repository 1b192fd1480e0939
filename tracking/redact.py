"""Keep credentials out of everything written or shown: URIs lose their secrets here.

Why one module: a tracking URI such as ``http://user:password@host:5000`` or a dataset URI
such as ``s3://KEY:SECRET@bucket/ds`` travels into run configs, MLflow params, manifests,
the tracking outbox, log lines and error messages. ``redact_uri`` is the one function that
removes user:password@ and secret query options (``?access_key=...&secret_key=...``)
before any of those. ``credentials_to_env`` is what the CLI does with a URI typed with
credentials: they move into the environment variables the clients read (MLflow's
``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, pyarrow's ``AWS_ACCESS_KEY_ID``/...), and the
clean URI is used everywhere else.
"""
from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# query options that carry secrets (matched case-insensitively, as words in the name)
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "pwd", "signature", "sig",
                 "credential", "credentials", "auth")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_S3_ENV = {"user": "AWS_ACCESS_KEY_ID", "password": "AWS_SECRET_ACCESS_KEY",
           "access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
           "session_token": "AWS_SESSION_TOKEN"}
_HTTP_ENV = {"user": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


def _is_secret_option(name: str) -> bool:
    words = re.split(r"[^a-z0-9]+|(?<=[a-z])(?=[0-9])", name.lower())
    return any(w in _SECRET_WORDS for w in words) or name.lower().startswith("x-amz-")


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """``(uri without credentials, {"user"/"password"/secret query option: value})``."""
    text = os.fspath(uri)
    if "://" not in text:
        return text, {}
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. a malformed port: keep nothing that may be a secret
        head, _, rest = text.partition("://")
        return f"{head}://{rest.rsplit('@', 1)[-1]}", {"password": ""}
    found: dict[str, str] = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        found["user"] = user
        if password:
            found["password"] = password
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = []
    for name, value in query:
        if _is_secret_option(name):
            found[name.lower()] = value
        else:
            kept.append((name, value))
    if not found:
        return text, {}
    clean = urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment))
    return clean, found


def redact_uri(uri: str) -> str:
    """``uri`` with user:password@ and secret query options removed (else unchanged)."""
    return split_credentials(uri)[0]


def redact_text(text: str) -> str:
    """``text`` with every URI in it redacted (for error messages and log lines)."""
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), str(text))


def credentials_to_env(uri: str, env: dict[str, str] | None = None) -> str:
    """Move the credentials of ``uri`` into the environment its client reads; return the
    clean URI. http(s) -> MLFLOW_TRACKING_USERNAME/PASSWORD; s3 -> AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN). Other schemes (a database URI) keep
    theirs: their clients read them only from the URI, which is then redacted wherever it
    is written or shown."""
    env = os.environ if env is None else env
    clean, found = split_credentials(uri)
    scheme = clean.split("://", 1)[0].lower() if "://" in clean else ""
    names = _HTTP_ENV if scheme in ("http", "https") else _S3_ENV if scheme == "s3" else None
    if not found or names is None:
        return uri
    unknown = sorted(k for k in found if k not in names)
    if unknown:
        wanted = ", ".join(sorted(set(names.values())))
        raise ValueError(f"{clean}: credential option(s) {', '.join(unknown)} in the URI are "
                         f"not understood; remove them and set {wanted} in the environment "
                         "instead")
    for key, value in found.items():
        if value or key == "user":
            env[names[key]] = value
    return clean


def credentials_in_text_to_env(text: str, env: dict[str, str] | None = None) -> str:
    """``text`` with every URI in it passed through ``credentials_to_env``: for arguments
    that hold a URI inside a longer value, e.g. ``--set data.uri=s3://KEY:SECRET@bucket/ds``
    (a whole URI gets ``credentials_to_env`` itself)."""
    return _URI_IN_TEXT.sub(lambda m: credentials_to_env(m.group(0), env), str(text))


def same_store_from_env(recorded: str | None) -> str | None:
    """A URI recorded without credentials, or MLFLOW_TRACKING_URI when that is the same
    store with its credentials (a database URI can carry them only in the URI)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if recorded and env and redact_uri(env) == recorded:
        return env
    return recorded
