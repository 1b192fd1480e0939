"""`mrlfads infer`: a trained model's outputs on every trial of a dataset: posterior means,
or the average of N posterior samples (--samples N)."""
from __future__ import annotations

import argparse

NAME = "infer"
HELP = "write rates, factors, inferred inputs, messages and the effectome of a trained model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint file (RUN/best.pt) or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, help="dataset directory or URI")
    p.add_argument("--out", required=True, help="output directory (an Arrow dataset)")
    p.add_argument("--splits", default="all", help="comma-separated splits, or all (default)")
    p.add_argument("--samples", type=_samples, default=0, metavar="N",
                   help="0 (default): posterior means; N >= 1: average the outputs of N runs "
                   "drawing posterior samples (lfads-torch's posterior averaging)")
    p.add_argument("--seed", type=int, default=0, help="seeds the posterior samples (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _samples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of samples, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--samples {value}: use 0 (posterior means) or N >= 1")
    return value


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from data_loaders.reader import ArrowDataset
    from mrlfads import metrics as M
    from mrlfads.effectome import input_cut_effectome, input_rms
    from tracking.shareable import manifest_digest, shared_manifest
    from training.config import RunConfig, check_against_data
    from training.data import load_split
    from training.evaluate import collect_outputs, cut_effectome_metrics, score
    from training.infer_io import write_outputs
    from training.loop import resolve_device
    from training.model_source import load_any_model

    model, run_cfg_dict, _ = load_any_model(args.model, args.tracking_uri)
    cfg = RunConfig.from_dict(run_cfg_dict)
    dataset = ArrowDataset.open(args.data)
    m = dataset.manifest
    splits = [s for s in m.splits if m.splits[s] > 0] if args.splits == "all" else args.splits.split(",")
    cfg = cfg.with_overrides({"data.valid_split": splits[0] if "valid" not in splits else "valid",
                              "data.train_split": "train" if "train" in m.splits else splits[0]})
    check_against_data(cfg, m)
    device = resolve_device(args.device)
    model.to(device)
    torch.manual_seed(args.seed)
    parts, metrics, input_cuts = [], {}, []
    for split in splits:
        data = load_split(dataset, split, device, with_truth=True)
        outputs, terms = collect_outputs(model, data, cfg, epoch=cfg.train.epochs,
                                         samples=args.samples)
        parts.append((split, data, outputs))
        scores = score(outputs, data, cfg.model, m.comm_matrix)
        scores.update(cut_effectome_metrics(model, data, m.comm_matrix, max_trials=data.n_trials))
        if cfg.model.inferred_inputs:
            input_cuts.append(input_cut_effectome(model, data.heldin, data.ext))
            scores.update({f"valid/effectome_inputs_cut/{r}": float(v)
                           for r, v in zip(cfg.model.region_names, input_cuts[-1])})
        # score() names keys valid/...; here each split gets its own prefix.
        for key, value in {**{f"valid/{t}": v for t, v in terms.items()}, **scores}.items():
            metrics[f"{split}/{key.removeprefix('valid/')}"] = value
    keys = parts[0][2].keys()
    outputs = {k: np.concatenate([p[2][k] for p in parts]) for k in keys}
    trial_id = np.concatenate([p[1].trial_id for p in parts])
    split_col = np.concatenate([np.full(p[1].n_trials, p[0]) for p in parts])
    names = list(cfg.model.region_names)
    messages = {tuple(k.split("/", 1)[1].split("->")): v for k, v in outputs.items()
                if k.startswith("messages/")}
    E_rms = M.effectome(messages, names) if messages else None
    # the cut effectome over every trial written: per split it is an RMS, so pool squares
    E_cut = None
    if messages:
        weights = [p[1].n_trials for p in parts]
        squares = [np.array([[metrics.get(f"{p[0]}/effectome_cut/{s}_to_{d}", np.nan) ** 2
                              for s in names] for d in names]) for p in parts]
        E_cut = np.sqrt(sum(w * q for w, q in zip(weights, squares)) / sum(weights))
    E_inputs = None
    if input_cuts:  # pooled over splits like the cut effectome: mean of squares by trials
        weights = [p[1].n_trials for p in parts]
        E_inputs = {"cut": np.sqrt(sum(w * q**2 for w, q in zip(weights, input_cuts))
                                   / sum(weights)),
                    "rms": input_rms({r: outputs[f"inputs/{r}"] for r in names}, names)}
    info = {"regions": names, "pairs": [f"{s}->{d}" for s, d in messages],
            "bins": [cfg.model.ic_enc_seq_len, m.n_bins], "obs_model": cfg.model.obs_model,
            "model": args.model, "data": args.data, "splits": splits,
            "samples": args.samples, "seed": args.seed,
            "heldout": {r.name: r.n_heldout for r in m.regions},
            "dataset": m.name, "dataset_digest": manifest_digest(m.to_dict())}
    out = write_outputs(args.out, outputs, trial_id, split_col, info, E_cut, metrics,
                        args.overwrite, message_rms=E_rms, inputs_effectome=E_inputs,
                        source_manifest=shared_manifest(m.to_dict()))
    print(f"wrote {len(trial_id)} trials ({', '.join(splits)}) to {out}")
    shown = ("co_bps", "/bps", "psth_r2", "effectome_cosine", "effectome_cut_cosine",
             "effectome_cut_separation", "message_r2", "input_r2")
    for key in sorted(k for k in metrics if k.count("/") == 1 and k.endswith(shown)):
        print(f"  {key} = {metrics[key]:.4f}")
    return 0
