"""The HTML report, looked at in a real headless Chromium: verdict text, rendered figures, no script runs."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.present.browser import Browser, find_chromium
from whisperdiff.present.report import render, verdict
from whisperdiff.store.digest import digest_fields

# CI installs Chromium (.ci/run); elsewhere the browser tests skip rather than fail on a missing package.
needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"), reason="no chromium")

SCENARIOS = {  # injected bug -> (headline, top finding kind, its op, words of its message)
    "clean": ("No divergence: B matches A on all 55 ops", None, None, None),
    "missing-ln-post": ("B diverges from A first at ln_post", "missing_op", "ln_post", "the layer norm is missing"),
    "variance-rescale": (
        "B diverges from A first at ln_post",
        "scale_mismatch",
        "ln_post",
        "statistics match, content does not",
    ),
    "mel-frontend": ("B diverges from A first at mel", "input_mismatch", "mel", "different frontend"),
}
XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_en):
    """torch and MAX on the embedded default, MAX also with each of three injected bugs."""
    root = tmp_path_factory.mktemp("tiny")
    ref = wd.trace("torch", model=tiny_en, out=root / "torch")
    runs = {}
    for name in SCENARIOS:
        inject = [] if name == "clean" else [name]
        runs[name] = wd.trace("max", model=tiny_en, out=root / f"max-{name}", inject=inject)
    return ref, runs


@needs_browser
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_report_shows_the_verdict_and_its_figures_in_a_browser(tiny_runs, tiny_en, browser, tmp_path, scenario):
    ref, runs = tiny_runs
    headline, kind, op, words = SCENARIOS[scenario]
    comparison = wd.compare(ref, runs[scenario], model=tiny_en)
    path = wd.write_report(comparison, tmp_path / f"{scenario}.html")
    assert path.stat().st_size < 5 * 2**20  # the bound for tiny

    page = browser.open(path, screenshot=tmp_path / f"{scenario}.png")
    banner = page.text.split("Divergence along the network")[0]
    assert headline in banner, banner
    if kind is None:
        assert "No findings" in banner
    else:
        first_finding = banner.split("confidence")[0]
        assert kind in first_finding and op in first_finding, banner
        assert words in banner
    focus = op or comparison.table["rel_l2"].idxmax()
    assert f"Up close: {focus}" in page.text
    # Every figure decoded with a real size: divergence, statistics, histogram, heat map, per time step.
    alts = [img["alt"] for img in page.images]
    assert len(page.images) == 5 and not page.broken_images, page.images
    assert all(img["width"] > 300 and img["height"] > 200 for img in page.images), page.images
    assert any(a.startswith("Absolute error at") for a in alts) and any(
        a.startswith("Error per time step") for a in alts
    )
    assert "weights sha256" in page.text and tiny_en.weights_sha256 in page.text  # the manifests, side by side
    assert not page.dialogs and not page.scripts_ran
    assert (tmp_path / f"{scenario}.png").stat().st_size > 50_000


@pytest.fixture(scope="module")
def small_all_taps(tmp_path_factory, small_random):
    return wd.trace("torch", model=small_random, out=tmp_path_factory.mktemp("small") / "torch", taps="all")


def _copy_with(ref: wd.Trace, out, edit_manifest, edit_tensor=None):
    """A byte copy of a trace whose manifest (and optionally one tensor file) is edited by hand,
    as a trace written by another tool might be."""
    shutil.copytree(ref.path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit_manifest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    if edit_tensor is not None:  # a consistent edit: the digest is re-written (else the trace is damaged, an error)
        file, change = edit_tensor
        value = change(np.load(out / file))
        np.save(out / file, value)
        entry = next(op for op in manifest["ops"] if op["file"] == file)
        entry.update(digest_fields(value, entry), file_bytes=(out / file).stat().st_size)
        (out / "manifest.json").write_text(json.dumps(manifest))
    return wd.load_trace(out)


@needs_browser
def test_script_in_an_op_name_or_model_path_is_shown_as_text_and_never_runs(small_all_taps, browser, tmp_path):
    def hostile(m):
        m["model"]["source"] = f"pt:/models/{XSS}/tiny.pt"
        m["input"]["path"] = f"/audio/{XSS}.wav"
        next(op for op in m["ops"] if op["name"] == "blocks.1.mlp.fc1")["name"] = XSS

    a = _copy_with(small_all_taps, tmp_path / "a", hostile)
    b = _copy_with(small_all_taps, tmp_path / "b", hostile, ("tensors/blocks.1.mlp.fc1.npy", lambda x: x * 1.5))
    comparison = wd.compare(a, b)
    assert comparison.first_divergence == XSS
    path = wd.write_report(comparison, tmp_path / "xss.html")
    raw = path.read_text()
    assert XSS not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "Content-Security-Policy" in raw and "<script" not in raw.lower()

    page = browser.open(path, screenshot=tmp_path / "xss.png")
    assert not page.dialogs and not page.scripts_ran
    assert f"B diverges from A first at {XSS}" in page.text  # shown, as text
    assert f"Up close: {XSS}" in page.text and f"/models/{XSS}/tiny.pt" in page.text
    assert page.images and not page.broken_images


def test_attention_probabilities_are_shown_for_an_attention_op(small_all_taps, tmp_path):
    swap = ("tensors/blocks.1.attn.weights.npy", lambda p: np.ascontiguousarray(np.swapaxes(p, -1, -2)))
    b = _copy_with(small_all_taps, tmp_path / "b", lambda m: None, swap)
    comparison = wd.compare(small_all_taps, b)
    assert comparison.first_divergence == "blocks.1.attn.weights"
    page = render(comparison, head=1)
    assert "Attention probabilities of head 1 at blocks.1.attn.weights" in page
    # An op inside the block picked with --op shows that block's attention too.
    page = render(comparison, ops=["blocks.1.mlp.fc1"])
    assert "Up close: blocks.1.mlp.fc1" in page and page.count("Attention probabilities of head") == 2
    with pytest.raises(wd.WhisperdiffError, match="--head 9 is out of range"):
        render(comparison, head=9)


def test_figures_drawn_by_forked_workers_are_those_drawn_one_by_one(small_all_taps, tmp_path, monkeypatch):
    """A report's figures are drawn in parallel where it forks: the same bytes as one by one, its SVG text
    kept as text (svg.fonttype none is read at save time) and the page the same from run to run."""
    swap = ("tensors/blocks.1.attn.weights.npy", lambda p: np.ascontiguousarray(np.swapaxes(p, -1, -2)))
    comparison = wd.compare(small_all_taps, _copy_with(small_all_taps, tmp_path / "b", lambda m: None, swap))

    def figures(page: str) -> list[str]:
        return re.findall(r'src="(data:[^"]+)"', page)

    parallel = figures(render(comparison))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    one_by_one = figures(render(comparison))
    assert len(parallel) >= 5 and parallel == one_by_one
    svg = base64.b64decode(parallel[0].split(",", 1)[1])
    assert parallel[0].startswith("data:image/svg+xml") and b"<text" in svg


def test_not_comparable_is_the_headline(small_all_taps, tmp_path):
    other = _copy_with(small_all_taps, tmp_path / "b", lambda m: m["model"].update(weights_sha256="0" * 64))
    style, headline = verdict(wd.compare(small_all_taps, other))
    assert style == "incomparable" and headline.startswith("NOT COMPARABLE: different weights")


def test_cli_report_and_compare_html(small_all_taps, tmp_path):
    b = _copy_with(small_all_taps, tmp_path / "b", lambda m: None, ("tensors/ln_post.npy", lambda x: x + 0.5))
    out = tmp_path / "reports" / "r.html"
    proc = run_cli("report", str(small_all_taps.path), str(b.path), "-o", str(out), "--op", "conv1", check=True)
    assert f"wrote {out}" in proc.stdout and "B diverges from A first at ln_post" in proc.stdout
    page = out.read_text()
    assert "Up close: ln_post" in page and "Up close: conv1" in page
    html = tmp_path / "c.html"
    proc = run_cli("compare", str(small_all_taps.path), str(b.path), "--html", str(html), check=True)
    assert "first divergence: ln_post" in proc.stdout and "B diverges from A first at ln_post" in html.read_text()


def test_cli_report_bad_input_leaves_nothing(small_all_taps, tmp_path):
    a = str(small_all_taps.path)
    out = tmp_path / "r.html"
    assert_one_line_error(
        run_cli("report", a, a, "-o", str(out), "--op", "blocks.9.mlp.fc1"), "not an op of both traces"
    )
    assert_one_line_error(run_cli("report", a, str(tmp_path / "nope"), "-o", str(out)), "does not exist")
    assert_one_line_error(run_cli("report", a, a, "-o", str(tmp_path / "r.txt")), "should end in .html")
    assert not any(tmp_path.iterdir())
