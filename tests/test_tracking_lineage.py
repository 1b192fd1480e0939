"""Exploit bookkeeping worked out by hand."""
from __future__ import annotations

import json

from mrlfads.tracking.lineage import changed, last_policy_line, lineage, orig_tag
from mrlfads.tracking.tune_callback import metric_key


def test_orig_tag_and_changed():
    assert orig_tag("3_lr=0.01@perturbed[lr=0.012]@perturbed[lr=0.02]") == "3_lr=0.01"
    assert changed({"lr": 1.0, "d": 0.1}, {"lr": 2.0, "d": 0.1}) == ({"lr": 1.0}, {"lr": 2.0})


def test_lineage_walks_back_through_donors_up_to_the_cloning_epoch():
    events = {
        # C took B's weights at epoch 6 (B was at 6); B took A's at 4; B's later exploit
        # at epoch 8 happened after C cloned it, so it is not C's history.
        "C": [{"epoch": 6, "donor_trial": "B", "donor_epoch": 6}],
        "B": [{"epoch": 4, "donor_trial": "A", "donor_epoch": 4},
              {"epoch": 8, "donor_trial": "D", "donor_epoch": 8}],
        "A": [{"epoch": 6, "donor_trial": "D", "donor_epoch": 6}],  # after B cloned A at 4
    }
    chain = lineage(events, "C")
    assert [(h["trial"], h["epoch"], h["donor_trial"]) for h in chain] == [("C", 6, "B"), ("B", 4, "A")]
    assert lineage(events, "D") == []
    # inconsistent records (a cycle) end the walk instead of looping
    assert len(lineage({"X": [{"epoch": 2, "donor_trial": "Y", "donor_epoch": 2}],
                        "Y": [{"epoch": 2, "donor_trial": "X", "donor_epoch": 2}]}, "X")) == 2


def test_policy_file_last_line_for_the_target(tmp_path):
    p = tmp_path / "pbt_policy_x.txt"
    rows = [["1_lr=0.1", "0_lr=0.5", 2, 2, {}, {}],   # copied from the donor's own history
            ["2_lr=0.01", "1_lr=0.1", 4, 4, {}, {"lr": 0.12}],
            ["2_lr=0.01", "0_lr=0.5", 6, 6, {}, {"lr": 0.6}]]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert last_policy_line(p, "2_lr=0.01")[1:4] == ["0_lr=0.5", 6, 6]
    assert last_policy_line(p, "9_none") is None
    assert last_policy_line(tmp_path / "missing.txt", "x") is None


def test_metric_keys_are_mlflow_safe():
    assert metric_key("truth/messages/A->B") == "truth/messages/A_to_B"
    assert metric_key("valid/r2[A]") == "valid/r2_A_"
