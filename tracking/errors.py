"""The one error class a user of tracking/ can cause (bad URI, missing sweep, no finished trial)."""
from __future__ import annotations


class TrackingError(ValueError):
    """A tracking input is wrong; the message names it (URI, sweep, run, file) and the fix."""
