"""Names of every column in an mrlfads Arrow dataset (see docs/DESIGN.md, data_loaders).

One place builds and parses column names so writer, reader and loaders never disagree.
"""
from __future__ import annotations

import re

from mrlfads.atomic import TEMP_NAME_RE
from mrlfads.data_loaders.errors import DatasetError

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
SESSION = "session"  # int32 index into the manifest's sessions (multi-session datasets only)

REGION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Session names (file stems such as "sub-01_ses-2" fit): letters, digits, '_' and '-'.
SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_MSG_RE = re.compile(r"^truth/messages/([A-Za-z][A-Za-z0-9_]*)->([A-Za-z][A-Za-z0-9_]*)$")
_TASK_RE = re.compile(r"^task/[A-Za-z][A-Za-z0-9_]*$")

# The only file names the writer produces (data_loaders/writer.py): a manifest naming anything
# else (an absolute path, '..', another folder) is refused, so a dataset can never make a
# reader open, hash or an overwrite delete a file outside its own directory.
SHARD_PATH_RE = re.compile(rf"^{SHARDS_DIR}/part-[0-9]{{5}}(-[0-9a-f]{{8}})?\.(arrow|parquet)$")
EXTRA_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
EXTRA_PATH_RE = re.compile(rf"^{EXTRAS_DIR}/[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Largest region (neurons) and external input (dims) a dataset may declare. The model's
# read-in layer is N x N per region (mrlfads/params.py), so 16384 neurons is 1 GiB of
# float32 weights (4 GiB with gradients and Adam's two moments): beyond any recording made
# today (a few thousand units per region across several probes), and a manifest that claims
# more is refused before anything is allocated for it.
MAX_NEURONS_PER_REGION = 16384
MAX_EXT_DIM = 16384


def is_writer_file(rel: str) -> bool:
    """Whether `rel` (relative to a dataset root) is a name the writer makes."""
    name = rel.rsplit("/", 1)[-1]
    return (rel == MANIFEST_NAME or bool(SHARD_PATH_RE.match(rel) or EXTRA_PATH_RE.match(rel))
            or (rel.count("/") <= 1 and rel.split("/")[0] in (name, SHARDS_DIR, EXTRAS_DIR)
                and bool(TEMP_NAME_RE.match(name))))


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


def silenced_col(region: str) -> str:
    """(T,) 0/1 per trial: 1 in the bins where every message ``region`` sends was silenced
    by the experiment (an intervention the model is trained with; docs/MODEL.md,
    "Recorded interventions")."""
    return f"silenced/{check_region_name(region)}"


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
