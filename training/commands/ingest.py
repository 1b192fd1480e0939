"""`mrlfads ingest FILE.nwb [FILE.nwb ...] --out DIR`: NWB sessions -> one Arrow dataset."""
from __future__ import annotations

import argparse

NAME = "ingest"
HELP = ("Bin NWB spike times into trials and write an Arrow dataset (validated first; "
        "a failed ingest writes nothing).")


def _window(text: str) -> tuple[float, float]:
    try:
        start, stop = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window {text!r}: use START:STOP in seconds, e.g. -1.0:1.0")
    return start, stop


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _ids(text: str) -> tuple[int | str, ...]:
    from mrlfads.data_loaders.nwb.options import split_unit_ref, unit_ref

    refs = tuple(unit_ref(v) for v in _names(text))
    if not all(split_unit_ref(v) for v in refs):
        raise argparse.ArgumentTypeError(f"--drop-units {text!r}: give Units ids as integers "
                                         "(every file), or SESSION/ID (that file), e.g. "
                                         "12,40,sub-01_ses-2/7")
    return refs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE.nwb", help="NWB sessions (paths, or https:// / s3:// URIs, streamed: "
                   "only the tables and the selected units' spike times are fetched); several "
                   "become one dataset as --sessions says")
    p.set_defaults(_own_credentials=("files",))  # remote.py uses them; records the URI without
    p.add_argument("--out", required=True, help="dataset directory or s3:// URI to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--name", help="dataset name (default: first file's name)")
    g = p.add_argument_group("time")
    g.add_argument("--bin-ms", type=float, default=20.0, help="bin width in ms (default 20)")
    g.add_argument("--align", metavar="EVENT", help="trials column to align to, e.g. go_cue_time "
                   "(default: trial start); numbers, or text that reads as numbers ('N/A' or "
                   "empty: no event, see --unfit-trials)")
    g.add_argument("--window", type=_window, metavar="START:STOP",
                   help="seconds around the event, e.g. -1.0:1.0 (needed with --align; default "
                   "without it: 0 to the shortest trial)")
    g.add_argument("--ic-enc-seq-len", type=int, default=10, help="bins for the IC encoder (default 10)")
    g.add_argument("--unfit-trials", choices=("refuse", "drop"), default="refuse",
                   help="a trial without the --align event, whose window reaches outside "
                   "its start_time..stop_time, or over whose window a unit was not recorded "
                   "(Units obs_intervals): refuse (default: the ingest stops naming them) "
                   "or drop (left out; their ids in the warnings and the manifest)")
    g.add_argument("--window-beyond-trial", action="store_true",
                   help="let a window reach outside its trial's start_time..stop_time, binning "
                   "the spikes between trials (where units were recorded continuously); "
                   "windows of different trials may still not overlap")
    g = p.add_argument_group("units and regions")
    g.add_argument("--regions", type=_names, metavar="A,B", help="regions to keep (default: all)")
    g.add_argument("--min-neurons", type=int, default=1,
                   help="drop regions with fewer units, with a warning (default 1)")
    g.add_argument("--heldout", type=float, default=None, metavar="N|FRACTION",
                   help="held-out neurons per region: a count, or a fraction in (0, 1), at "
                   "least 1 in regions of 5+ units (default 0.1; 0 for none), drawn at random "
                   "among units that fire in the trial windows. Model selection ranks on them: "
                   "the score a model cannot win by copying its input")
    g.add_argument("--heldout-column", metavar="COL", help="boolean Units column marking held-out units")
    g.add_argument("--region-column", metavar="COL",
                   help="Units column with each unit's region (default: its electrode's location)")
    g.add_argument("--region-map", metavar="FILE", help="YAML/JSON {fine label: region or null}")
    g.add_argument("--drop-quality", type=_names, default=(), metavar="LABELS",
                   help="drop units whose quality is one of these, e.g. noise,mua")
    g.add_argument("--quality-column", default="quality", help="Units column for --drop-quality")
    g.add_argument("--drop-units", type=_ids, default=(), metavar="IDS",
                   help="leave out these units: Units ids (e.g. 12,40,41) from every file given; "
                   "SESSION/ID (e.g. sub-01_ses-2/7, the file's stem) from that file alone")
    g = p.add_argument_group("trials")
    g.add_argument("--perturb-column", metavar="COL",
                   help="trials column flagging perturbed trials (own split, never trained on, "
                   "unless --silence-region-column or --silence-region names the region they "
                   "silenced): boolean or "
                   "number (nonzero; NaN is not perturbed), or text such as an onset time or "
                   "'N/A' (a number as above; '', N/A, none, false, no, off are not perturbed; "
                   "any other word is)")
    g.add_argument("--silence-region-column", metavar="COL",
                   help="trials column naming the region each trial's intervention silenced "
                   "(a unit label, mapped by --region-map; empty for none). Those trials are "
                   "trained on with the model's messages from that region silenced over the "
                   "same bins: interventions tell apart pathways that observation alone "
                   "cannot (docs/MODEL.md, 'Recorded interventions'). Needs "
                   "--silence-time-columns")
    g.add_argument("--silence-region", metavar="REGION",
                   help="the region every trial --perturb-column flags silenced (a unit label, "
                   "mapped by --region-map), where the session stimulated one site; instead of "
                   "--silence-region-column")
    g.add_argument("--silence-time-columns", type=_names, metavar="START,STOP",
                   help="trials columns with each intervention's times (see --silence-times); "
                   "a bin is silenced when its centre is in [start, stop)")
    g.add_argument("--silence-times", choices=("session", "onset-duration"), default="session",
                   help="what --silence-time-columns hold: session (default), start and stop "
                   "in session seconds; onset-duration, the onset in seconds from the trial's "
                   "start_time and the duration, as DANDI photoinhibition sessions store them "
                   "(photostim_onset,photostim_duration)")
    g.add_argument("--condition", type=_names, metavar="COL,COL", dest="condition_columns",
                   help="trials columns forming the condition (default: 'condition' if present)")
    g.add_argument("--ext-column", metavar="COL", help="numeric trials column as external input")
    g.add_argument("--ext-timeseries", metavar="NAME", help="TimeSeries as external input")
    g.add_argument("--valid-fraction", type=float, default=0.2, help="valid share (default 0.2)")
    g.add_argument("--seed", type=int, default=0, help="seeds held-out choice and split (default 0)")
    g = p.add_argument_group("several files")
    g.add_argument("--sessions", choices=("auto", "matched", "separate"), default="auto",
                   help="matched: the same units in every file (same regions and unit count "
                   "per region, matched by position, e.g. chronic recordings), one session; "
                   "separate: a session per file named after it, each region holding the union "
                   "of the files' own units (a file's absent regions are recorded as missing), "
                   "split and held-out units chosen per session; auto (default): matched when "
                   "the files' regions and unit counts allow it, else separate")


def run(args: argparse.Namespace) -> int:
    from mrlfads.training.api import ingest

    heldout = args.heldout
    if heldout is not None and heldout >= 1 and heldout == int(heldout):
        heldout = int(heldout)
    dataset = ingest(
        args.files, args.out, overwrite=args.overwrite,
        bin_ms=args.bin_ms, align=args.align, window=args.window, regions=args.regions,
        min_neurons=args.min_neurons, heldout=heldout, heldout_column=args.heldout_column,
        region_column=args.region_column, region_map=args.region_map,
        drop_quality=tuple(args.drop_quality), drop_units=tuple(args.drop_units),
        quality_column=args.quality_column,
        perturb_column=args.perturb_column, condition_columns=args.condition_columns,
        silence_region_column=args.silence_region_column,
        silence_region=args.silence_region, silence_time_columns=args.silence_time_columns,
        silence_times=args.silence_times,
        ext_column=args.ext_column, ext_timeseries=args.ext_timeseries,
        valid_fraction=args.valid_fraction, seed=args.seed, ic_enc_seq_len=args.ic_enc_seq_len,
        name=args.name, sessions=args.sessions, unfit_trials=args.unfit_trials,
        window_beyond_trial=args.window_beyond_trial)
    _summary(dataset.manifest, args.out)
    return 0


def _summary(m, out: str) -> None:
    """Regions x units and trials per split, then the warnings, as rich tables."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    # headings are lines of their own: a table's title wraps at the table's width
    console.print(Text(f"{m.name}: {m.n_bins} bins of {m.bin_width_s * 1000:g} ms -> {out}",
                       style="bold"), soft_wrap=True)
    regions = Table()
    for col in ("region", "held-in", "held-out", "ext dim"):
        regions.add_column(col, justify="left" if col == "region" else "right")
    for r in m.regions:
        regions.add_row(r.name, str(r.n_heldin), str(r.n_heldout), str(m.ext_dims.get(r.name, 0)))
    console.print(regions)
    splits = Table()
    splits.add_column("split")
    splits.add_column("trials", justify="right")
    for s, n in m.splits.items():
        splits.add_row(s, str(n))
    console.print(Text("trials per split", style="bold"), soft_wrap=True)
    console.print(splits)
    if m.silenced:
        console.print(f"recorded interventions (trained on) silence: {', '.join(m.silenced)}")
    if m.sessions:
        console.print(Text("sessions (held-in+held-out units per region)", style="bold"),
                      soft_wrap=True)
        table = Table()
        table.add_column("session")
        for r in m.region_names:
            table.add_column(r, justify="right")
        for s in m.sessions:
            table.add_row(s.name, *(f"{a}+{b}" if (a, b) != (0, 0) else "-"
                                    for a, b in (s.units[r] for r in m.region_names)))
        console.print(table)
        for s in m.sessions:
            for r, why in s.missing.items():
                console.print(f"session {s.name}: no {r} ({why})")
    for w in m.provenance.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")
