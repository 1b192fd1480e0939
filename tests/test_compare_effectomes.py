"""`mrlfads compare-effectomes`: several fits' cut effectomes, the pathway pairs whose order
the fits disagree on, and the tiers every fit agrees on, checked against an example worked
by hand; the files as `mrlfads infer` writes them (tests/test_perturb_cli.py reads two real
infer outputs)."""
from __future__ import annotations

import json

import pytest

from mrlfads.training.cli import main
from mrlfads.training.effectome_compare import compare, read_effectome

REGIONS = ["A", "B", "C"]
# matrix[dst][src]; pathways B->A, C->A (into A), A->B, C->B (into B), A->C, B->C (into C)
FITS = [
    [[None, 0.90, 0.80], [0.50, None, 0.40], [0.10, 0.20, None]],
    [[None, 0.80, 0.90], [0.40, None, 0.50], [0.20, 0.10, None]],
    [[None, 0.95, 0.85], [0.45, None, 0.35], [0.15, 0.05, None]],
]


def _write(tmp_path, fits, regions=REGIONS):
    dirs = []
    for k, m in enumerate(fits):
        d = tmp_path / f"fit{k}"
        d.mkdir()
        (d / "effectome.json").write_text(json.dumps(
            {"regions": regions, "matrix": m, "index": "matrix[dst][src]"}))
        dirs.append(d)
    return dirs


def test_pairs_in_differing_order_and_tiers_by_hand(tmp_path):
    """Each fit swaps the two pathways into one region and no others: three pairs differ.
    Every fit puts {B->A, C->A} on top and {A->C, B->C} at the bottom, so three tiers; the
    top 1, 3 and 5 differ between fits, so no boundary falls there."""
    out = compare([read_effectome(d) for d in _write(tmp_path, FITS)])
    by = {p["pathway"]: p for p in out["pathways"]}
    assert [p["pathway"] for p in out["pathways"]] == ["B->A", "C->A", "A->B", "C->B",
                                                       "A->C", "B->C"]  # by mean
    assert by["B->A"]["mean"] == pytest.approx((0.90 + 0.80 + 0.95) / 3)
    assert (by["C->B"]["min"], by["C->B"]["max"]) == (0.35, 0.50)
    assert by["A->B"]["values"] == [0.50, 0.40, 0.45]
    assert {n: p["order_differs_from"] for n, p in by.items()} == {
        "B->A": ["C->A"], "C->A": ["B->A"], "A->B": ["C->B"], "C->B": ["A->B"],
        "A->C": ["B->C"], "B->C": ["A->C"]}
    assert out["pairs_in_differing_order"] == 3
    assert {n: p["tier"] for n, p in by.items()} == {
        "B->A": 1, "C->A": 1, "A->B": 2, "C->B": 2, "A->C": 3, "B->C": 3}
    assert out["mean_matrix"][0][1] == pytest.approx(by["B->A"]["mean"])
    assert out["mean_matrix"][0][0] is None


def test_the_api_takes_folders_files_and_effectome_objects(tmp_path):
    import numpy as np

    import mrlfads
    from mrlfads.training.api.infer import Effectome

    dirs = _write(tmp_path, FITS)
    obj = Effectome(tuple(REGIONS), np.array(FITS[2], dtype=float), None)
    out = mrlfads.compare_effectomes([dirs[0], dirs[1] / "effectome.json", obj])
    assert out["fits"] == [str(dirs[0]), str(dirs[1] / "effectome.json"), "fit 2"]
    assert out["pairs_in_differing_order"] == 3


def test_a_closed_pathway_takes_no_part(tmp_path):
    closed = [[row[:] for row in m] for m in FITS]
    for m in closed:
        m[2][1] = None  # B->C closed in every fit
    out = compare([read_effectome(d) for d in _write(tmp_path, closed)])
    by = {p["pathway"]: p for p in out["pathways"]}
    assert "B->C" not in by and by["A->C"]["order_differs_from"] == []
    assert by["A->C"]["tier"] == 3 and out["pairs_in_differing_order"] == 2


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    dirs = _write(tmp_path, FITS)
    out = tmp_path / "cmp.json"
    assert main(["compare-effectomes", *map(str, dirs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cut effectomes of 3 fits, by mean" in printed.splitlines()
    assert "within tiers, 3 pair(s) of pathways are ranked differently" in " ".join(
        printed.split())
    saved = json.loads(out.read_text())
    assert saved["fits"] == [str(d) for d in dirs] and saved["pairs_in_differing_order"] == 3
    # the same fit twice (a folder and its file): one order everywhere
    assert main(["compare-effectomes", str(dirs[0]), str(dirs[0] / "effectome.json")]) == 0
    assert "every fit ranks every pathway in the same order" in capsys.readouterr().out


@pytest.mark.parametrize("which, message", [
    ("regions", "regions ['A', 'B', 'X'] differ from"),
    ("one", "give two or more fits"),
    ("missing", "no effectome.json; pass an `mrlfads infer --out` folder"),
    ("bad", "not an mrlfads effectome"),
])
def test_bad_inputs_exit_2_naming_the_input(tmp_path, capsys, which, message):
    dirs = _write(tmp_path, FITS[:2])
    if which == "regions":
        other = tmp_path / "other"
        other.mkdir()
        (other / "effectome.json").write_text(json.dumps(
            {"regions": ["A", "B", "X"], "matrix": FITS[0]}))
        args = [dirs[0], other]
    elif which == "one":
        args = [dirs[0]]
    elif which == "missing":
        args = [dirs[0], tmp_path / "nowhere"]
    else:
        (dirs[1] / "effectome.json").write_text('{"regions": ["A"]}')
        args = dirs
    assert main(["compare-effectomes", *map(str, args)]) == 2
    assert message in capsys.readouterr().err
