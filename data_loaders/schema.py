"""Names of every column in an mrlfads Arrow dataset (see docs/DESIGN.md, data_loaders).

One place builds and parses column names so writer, reader and loaders never disagree.
"""
from __future__ import annotations

import re

from data_loaders.errors import DatasetError

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

MANIFEST_NAME = "dataset.json"
SHARDS_DIR = "shards"
EXTRAS_DIR = "extras"

SPLITS = ("train", "valid", "test", "perturbed")
OBS_MODELS = ("poisson", "gaussian")

TRIAL_ID = "trial_id"
SPLIT = "split"
CONDITION = "condition"
PERTURBED = "perturbed"

REGION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_MSG_RE = re.compile(r"^truth/messages/([A-Za-z][A-Za-z0-9_]*)->([A-Za-z][A-Za-z0-9_]*)$")
_TASK_RE = re.compile(r"^task/[A-Za-z][A-Za-z0-9_]*$")


def check_region_name(name: object, where: str = "region name") -> str:
    """Return `name` if it is a valid region name, else raise DatasetError naming `where`."""
    if not isinstance(name, str) or not REGION_RE.match(name):
        raise DatasetError(
            f"{where}: {name!r} is not a valid region name; use letters, digits and '_', "
            "starting with a letter (it becomes part of column names and metric keys)"
        )
    return name


def x_col(region: str) -> str:
    return f"x/{check_region_name(region)}"


def ext_col(region: str) -> str:
    return f"ext/{check_region_name(region)}"


def truth_rates_col(region: str) -> str:
    return f"truth/rates/{check_region_name(region)}"


def truth_messages_col(src: str, dst: str) -> str:
    return f"truth/messages/{check_region_name(src)}->{check_region_name(dst)}"


def truth_inputs_col(region: str) -> str:
    return f"truth/inputs/{check_region_name(region)}"


def task_col(name: str) -> str:
    return f"task/{check_region_name(name, where='task name')}"


def parse_message_col(col: str) -> tuple[str, str] | None:
    """('A', 'B') for 'truth/messages/A->B', else None."""
    m = _MSG_RE.match(col)
    return (m.group(1), m.group(2)) if m else None


def is_truth_col(col: str) -> bool:
    if parse_message_col(col) is not None:
        return True
    for prefix in ("truth/rates/", "truth/inputs/"):
        if col.startswith(prefix) and REGION_RE.match(col[len(prefix):]):
            return True
    return False


def is_task_col(col: str) -> bool:
    return bool(_TASK_RE.match(col))


def truth_region(col: str) -> str | None:
    """Region a rates/inputs truth column belongs to (None for messages)."""
    for prefix in ("truth/rates/", "truth/inputs/"):
        if col.startswith(prefix):
            return col[len(prefix):]
    return None
