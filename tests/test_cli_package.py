"""The CLI as a package (issue 21): shared option groups with the library's defaults, one progress-callback
shape, and `tolerances` as a library function (experiments.calibrate)."""

from __future__ import annotations

import pytest
import typer

import whisperdiff as wd
from whisperdiff.errors import WhisperdiffError
from whisperdiff.experiments.calibrate import calibrate
from whisperdiff.measure.tolerances import Tolerance, parse_tolerances
from whisperdiff.present.cli import app


def _params(command: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


def test_compare_and_report_take_the_same_options_with_the_librarys_defaults():
    compare, report = _params("compare"), _params("report")
    shared = ("rename", "model", "replay", "force", "min_cosine", "max_rel_l2", "atol", "rtol", "tolerances")
    for name in shared:
        assert compare[name].opts == report[name].opts and compare[name].help == report[name].help, name
    default = Tolerance()
    for name in ("min_cosine", "max_rel_l2", "atol", "rtol"):
        assert compare[name].default == getattr(default, name), name
    check = _params("check")
    assert all(check[name].help == compare[name].help for name in ("rename", "model", "replay", "force"))


def test_calibrate_re_runs_in_float64_and_proposes_tolerances(small_random, tmp_path):
    ref = wd.trace("torch", model=small_random, out=tmp_path / "ref", taps="output")
    totals, ops = [], []
    cal = calibrate(ref, factor=10, on_total=totals.append, on_op=ops.append)
    assert totals == [len(ref.ops)] and sorted(ops) == sorted(ref.ops)  # one progress shape: total, then each op
    assert "float64" in cal.against and cal.factor == 10 and cal.reference == ref.path
    assert cal.tolerances.default.max_rel_l2 > 0  # float32 against float64: a spread, not zero
    text = cal.to_toml(when="2026-01-01")
    assert text.startswith("# whisperdiff tolerances, proposed 2026-01-01")
    assert parse_tolerances(text, "proposed.toml").rules == cal.tolerances.rules


def test_calibrate_against_another_run_and_bad_factor(small_random, tmp_path):
    a = wd.trace("torch", model=small_random, out=tmp_path / "a", taps="output")
    b = wd.trace("torch", model=small_random, out=tmp_path / "b", taps="output")
    cal = calibrate(a, against=b.path, factor=2)
    assert cal.against == str(b.path) and wd.check(a, b, cal.tolerances).passed
    with pytest.raises(WhisperdiffError, match="--factor"):
        calibrate(a, factor=0.5)
