"""The error a user gets from a bad search-space file."""
from __future__ import annotations


class SearchSpaceError(ValueError):
    """A search space is invalid; the message names the file, the key and the fix."""
