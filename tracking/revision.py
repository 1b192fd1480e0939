"""The code revision a run was made with, as the tags every run (train and sweep) carries."""
from __future__ import annotations

import subprocess
from pathlib import Path

REVISION_TAG = "mrlfads.git_revision"  # the commit, with -dirty when the tree had changes
COMMIT_TAG = "mlflow.source.git.commit"  # the commit alone, where MLflow's UI looks


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The commit of the code in ``cwd`` (default: this package's checkout, not the user's
    working directory) with ``-dirty`` when tracked files changed; None outside a git
    checkout (an installed package) or without git."""
    here = Path(cwd or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("-dirty" if dirty else "")) if rev else None


def revision_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """``{REVISION_TAG, COMMIT_TAG}`` for the current revision; empty when it is unknown."""
    rev = git_revision(cwd)
    if rev is None:
        return {}
    return {REVISION_TAG: rev, COMMIT_TAG: rev.removesuffix("-dirty")}
