"""One module per `mrlfads` subcommand; see training/cli.py. Also the argparse value types
the commands share, so a bad number reads the same in every command."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(minimum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (argparse names the flag), of ``unit``
    when given ("epoch": "need at least 1 epoch")."""
    whole = f"a whole number of {unit}s" if unit else "a whole number"
    need = f"{minimum} {unit}" if unit else f"{minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {whole}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"need at least {need}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value
