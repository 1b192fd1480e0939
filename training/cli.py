"""The `mrlfads` console script: one subcommand per module in training/commands/.

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. A user's mistake (any ValueError/OSError subclass raised with a
message naming the input and the fix) prints as one line and exits 2; ``--debug`` shows the
traceback instead. Heavy imports (torch, ray, mlflow) happen inside ``run`` so that
``mrlfads --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

import mrlfads
from mrlfads.tracking.redact import credentials_in_text_to_env, credentials_to_env, redact_text
from mrlfads.training import faults
from mrlfads.training.signals import interrupt_on_termination

# Order is the order shown in --help.
COMMANDS = ["demo", "simulate", "ingest", "train", "sweep", "promote", "infer", "perturb", "export_nwb",
            "report", "compare_effectomes", "ui", "import_metrics"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _load(name: str):
    try:
        return importlib.import_module(f"mrlfads.training.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"mrlfads.training.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrlfads",
        description="Multi-region LFADS: simulate or ingest data, train, sweep with PBT on Ray, "
        "track in MLflow, promote, infer and perturb.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"mrlfads {mrlfads.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


# Commands that run several training processes on shared cores (a sweep's trials).
SHARED_CPU_COMMANDS = ("sweep", "demo")


def set_openmp_wait_policy(command: str | None) -> None:
    """PASSIVE OpenMP waiting where processes share cores, the default everywhere else.

    Threads that spin while waiting made small matmuls 10-30x slower on an oversubscribed
    CPU; on idle cores the same PASSIVE policy made one 2-thread training run 2x slower
    (docs/PERFORMANCE.md, "Threads and OMP_WAIT_POLICY"). Must run before torch is
    imported (the OpenMP runtime reads it once); a value the user set wins."""
    if command in SHARED_CPU_COMMANDS:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def credentials_off_the_command_line(args: argparse.Namespace) -> None:
    """Every URI argument (and MLFLOW_TRACKING_URI) typed with credentials gives them to the
    environment its client reads and goes on without them, so no config, param, manifest,
    outbox or message downstream can hold them (tracking/redact.py). A command lists in
    `_own_credentials` the arguments that use their credentials themselves and record only
    the redacted URI (ingest's remote NWB files: a presigned URL's signature, basic auth)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = credentials_to_env(os.environ["MLFLOW_TRACKING_URI"])
    own = getattr(args, "_own_credentials", ())
    for name, value in vars(args).items():
        if name in own:
            continue
        if isinstance(value, str) and "://" in value:
            setattr(args, name, _without_credentials(value))
        elif isinstance(value, list) and any(isinstance(v, str) and "://" in v for v in value):
            setattr(args, name, [_without_credentials(v) if isinstance(v, str) else v
                                 for v in value])


def _without_credentials(value: str) -> str:
    """A URI argument without its credentials; in any other value (``--set
    data.uri=s3://KEY:SECRET@...``) every URI it holds without theirs."""
    if _WHOLE_URI.match(value):
        return credentials_to_env(value)
    return credentials_in_text_to_env(value)


_WHOLE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# A START:STOP value whose start is negative, e.g. "-1.0:1.0" or "-.5:1"
_NEGATIVE_RANGE = re.compile(r"^-(\d+\.?\d*|\.\d+):")


def join_negative_ranges(argv: list[str]) -> list[str]:
    """``--window -1.0:1.0`` as ``--window=-1.0:1.0``. argparse takes a value that starts
    with '-' and is not a plain number for an option, and stops with "expected one
    argument"; a window before the aligned event is the usual case (README, "From DANDI to
    a sweep")."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if (tok.startswith("--") and "=" not in tok and i + 1 < len(argv)
                and _NEGATIVE_RANGE.match(argv[i + 1])):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = build_parser()
    args = parser.parse_args(join_negative_ranges(sys.argv[1:] if argv is None else list(argv)))
    set_openmp_wait_policy(args.command)
    if args.command in SHARED_CPU_COMMANDS and not getattr(args, "address", None):
        from mrlfads.training.sweep import local_ray_on_loopback

        local_ray_on_loopback()  # before anything imports ray
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USER_ERROR
    interrupt_on_termination()  # SIGTERM/SIGHUP end like Ctrl-C (training/signals.py)
    try:
        credentials_off_the_command_line(args)
        faults.announce()  # MRLFADS_FAULT (fault tests): a bad value exits 2 here
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
