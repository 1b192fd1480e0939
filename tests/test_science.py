"""Science check: MR-LFADS recovers who talks to whom on a reduced memory ring.

The memory ring has pathways A0->A1->A2->A0 only; the effectome of a good fit is large on
those three entries and near zero on the other three, so its cosine with the true
communication matrix approaches 1. The issue asks for >= 0.9 on a reduced ring.
"""
from pathlib import Path

import pytest

from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.simulate import simulate
from mrlfads.training.config import RunConfig, load_config_file
from mrlfads.training.loop import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "benchmarks" / "science" / "reduced_ring.yaml"


def _fit_reduced_ring(tmp_path, seed: int = 0, **simulate_kw) -> list[dict[str, float]]:
    """Simulate the reduced memory ring (320 trials of 60 bins, network seed 0) and train
    reduced_ring.yaml on it for 25 epochs (training seed ``seed``); returns every epoch's
    metrics."""
    simulate("memory-ring", out=tmp_path / "ring", trials=320, n_bins=60, seed=0, **simulate_kw)
    ds = ArrowDataset.open(tmp_path / "ring")
    cfg = RunConfig.for_dataset(ds.manifest, uri=str(tmp_path / "ring"),
                                user=load_config_file(CONFIG),
                                overrides={"train.epochs": 25, "train.seed": seed})
    trainer = Trainer(cfg, ds)
    return [trainer.run_epoch() for _ in range(cfg.train.epochs)]


@pytest.mark.slow
def test_reduced_memory_ring_effectome_cosine(tmp_path):
    history = _fit_reduced_ring(tmp_path, n_units=16)
    last = history[-1]
    assert last["valid/effectome_cosine"] >= 0.9, [h["valid/effectome_cosine"] for h in history]
    assert last["valid/message_r2"] >= 0.5
    # the absent pathways carry less than any present one
    present = [last["effectome/A0_to_A1"], last["effectome/A1_to_A2"], last["effectome/A2_to_A0"]]
    absent = [last["effectome/A1_to_A0"], last["effectome/A2_to_A1"], last["effectome/A0_to_A2"]]
    assert max(absent) < min(present)
    # the default effectome (cut: the target's readout change when one pathway is silenced)
    assert last["valid/effectome_cut_cosine"] >= 0.9
    assert last["valid/effectome_cut_separation"] > 1.0


@pytest.mark.slow
def test_spiking_ring_ranks_every_present_pathway_above_every_absent_one(tmp_path):
    """The reduced ring as Poisson spikes. Its messages are white noise redrawn every 20 ms
    step, so sparse spikes carry almost none of them (at 5 Hz in 10 ms bins a decoder from
    the spikes recovers nothing, docs/RESULTS.md "Spikes"); at 100 Hz in 20 ms bins (2
    spikes per bin) with 64 units per region they are recoverable. There the cut effectome
    has cosine 0.961 and 0.945 with the truth (training seeds 0 and 1) and ranks the three
    pathways above the three absent ones by a factor 24-26; with 32 units the loop's return
    pathway A2->A0 was underestimated (cosine 0.65-0.69)."""
    last = _fit_reduced_ring(tmp_path, n_units=64, obs="poisson", rate_hz=100.0,
                             bin_ms=20.0)[-1]
    assert last["valid/effectome_cut_cosine"] >= 0.9, last["valid/effectome_cut_cosine"]
    present = [last[f"effectome_cut/{p}"] for p in ("A0_to_A1", "A1_to_A2", "A2_to_A0")]
    absent = [last[f"effectome_cut/{p}"] for p in ("A1_to_A0", "A2_to_A1", "A0_to_A2")]
    assert min(present) > 5 * max(absent), (present, absent)
    assert last["valid/effectome_cut_separation"] == pytest.approx(min(present) / max(absent))
    assert last["valid/message_r2"] >= 0.4
