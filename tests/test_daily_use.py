"""Daily use (issue 16): what the terminal, the report and a notebook show, with the conventions users
expect. Real traces (torch on a small random model, the embedded tiny.en where text matters), the
real CLI in a subprocess (and in a pseudo-terminal for the progress bars), a real Chromium."""

from __future__ import annotations

import os
import pty
import re
import struct
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_RANDOM, assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.present.browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[1]
needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"), reason="no chromium")
COMPILING = "compiling the MAX graph for these dims (first run only; cached after)"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_random):
    """A: torch, default taps. Clean B: the same again. Buggy B: another frontend (mel-frontend acts on
    the input, so it runs on torch). Output-only B. Other: another model (not comparable), all taps."""
    d = tmp_path_factory.mktemp("daily")
    other = wd.load_model(SMALL_RANDOM + ",seed=1")
    return {
        "a": wd.trace("torch", model=small_random, out=d / "a"),
        "clean": wd.trace("torch", model=small_random, out=d / "clean"),
        "bug": wd.trace("torch", model=small_random, out=d / "bug", inject=["mel-frontend"]),
        "output": wd.trace("torch", model=small_random, out=d / "output", taps="output"),
        "other": wd.trace("torch", model=other, out=d / "other", taps="all"),
    }


def _terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """Run the CLI in a pseudo-terminal (so rich draws its progress bars); the output without colours."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisperdiff.present.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    return proc.wait(600), re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n")


# -- 1. the MAX compile says what it does; the headline says how long it took ---------------------
@pytest.mark.slow
def test_max_compile_is_announced_and_timed_in_the_headline(small_random, tmp_path):
    seen = []
    # The graph test_max_encoder.py compiles (small dims, all taps, float32): loaded from MAX's cache here.
    session = wd.Session("max", model=small_random, taps="all", on_status=seen.append)
    assert seen == ["loading model", COMPILING]
    assert session.runner.facts()["compile_seconds"] > 0
    proc = run_cli("trace", "--impl", "max", "-m", SMALL_RANDOM, "--taps", "all", "-o", str(tmp_path / "t"), check=True)
    headline = proc.stdout.splitlines()[0]
    assert headline.startswith(f"wrote {tmp_path / 't'}") and re.search(
        r"MAX graph (loaded from cache|compiled) in \d", headline
    )


# -- 2 and 9. the report: whole page, the rows that matter first, 1400 px wide; the plots ---------
@needs_browser
def test_report_screenshot_shows_the_whole_page_with_the_divergent_rows_pinned(runs, tmp_path):
    c = wd.compare(runs["a"], runs["bug"])
    path = wd.write_report(c, tmp_path / "bug.html")
    with Browser() as browser:
        page = browser.open(path, screenshot=tmp_path / "bug.png")
    assert page.scroll_width <= 1400, page.scroll_width  # no sideways scrolling in a 1400 px window
    width, height = struct.unpack(">II", (tmp_path / "bug.png").read_bytes()[16:24])  # the PNG's IHDR
    assert width == 1400 and height == page.height, (width, height, page.height)  # all of it, not one window
    lines = page.text.split("Every op")[1].split("where it goes wrong")[1].splitlines()
    rows = [line for line in lines if re.match(r"\d+\t", line)]
    assert rows[0].startswith("0\tmel\t")  # the first divergence is pinned as the first row
    assert [r.split("\t")[1] for r in rows[-len(c.table) :]] == list(c.table["op"])  # then every op, in order
    assert "The two runs" in page.text.split("Every op")[1]  # the page goes on after the whole table
    raw = path.read_text()
    assert "80vh" not in raw and "class=scroll" not in raw  # no box that scrolls inside the page


def test_clean_report_marks_the_up_close_op_within_tolerance_and_lists_no_introducers(runs):
    from whisperdiff.present.report import render, top_introducers

    c = wd.compare(runs["a"], runs["clean"])
    assert top_introducers(c) == []
    page = render(c)
    assert re.search(r"<h2>Up close: [\w.]+ <span class=within>within tolerance</span>", page)
    assert "Ops that introduce the most error" not in page and "<tbody class=pinned>" not in page


def test_report_is_a_jinja_template_with_autoescape(runs, tmp_path):
    from whisperdiff.present.report import CSP, _environment, render

    assert (
        _environment().autoescape("report.html.j2")
        and (ROOT / "src/whisperdiff/present/templates/report.html.j2").exists()
    )
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "present/templates/*.j2" in pyproject["tool"]["setuptools"]["package-data"]["whisperdiff"]
    c = wd.compare(runs["a"], runs["bug"])
    c.manifest_b["model"]["source"] = "pt:/x/<b onmouseover=alert(1)>.pt"
    page = render(c)
    assert "&lt;b onmouseover=alert(1)&gt;" in page and "<b onmouseover" not in page
    assert f'content="{CSP}"' in page and "script-src" not in CSP and "<script" not in page.lower()


def test_plots(runs):
    from matplotlib.figure import Figure

    from whisperdiff.present import plots

    clean = wd.compare(runs["a"], runs["clean"])
    fig = wd.plot(clean, "divergence")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("exactly 0" in text for text in labels)  # the clean run's zeros are marked, not drawn at 1e-12
    stats = wd.plot(clean, "statistics")
    top, bottom = stats.axes[:2]
    assert top.get_ylabel() == "std B / std A" and bottom.get_ylabel() == "(mean B - mean A) / std A"
    low, high = top.get_ylim()
    assert low <= 1 - 1e-4 and high >= 1 + 1e-4  # the tolerance band shows; 1.0 is not zoomed into noise
    steps = wd.plot(clean, "steps", op="blocks.0.mlp.fc1")
    assert steps.axes[1].get_ylim()[0] <= 0.99 and "(within tolerance)" in steps.axes[0].get_title()
    bars = plots.patching(["mel", "conv1", "ln_post"], [0.1, 0.95, 1.0], "conv1")
    assert bars.axes[0].get_ylabel() == "% of B's final error restored"
    assert [round(p.get_height()) for p in bars.axes[0].patches] == [10, 95, 100]
    for kind in ("histogram", "heatmap"):
        assert isinstance(wd.plot(clean, kind, op="conv1"), Figure)


# -- 3. not comparable stops compare, report and check; --force goes on ---------------------------
def test_not_comparable_stops_with_the_reasons_unless_forced(runs, tmp_path):
    a, other = str(runs["a"].path), str(runs["other"].path)
    for command in (["compare", a, other], ["report", a, other, "-o", str(tmp_path / "r.html")], ["check", a, other]):
        proc = run_cli(*command)
        assert proc.returncode == 2 and not proc.stdout, (command, proc.stdout)
        assert_one_line_error(proc, "not comparable", "different weights")
    assert not (tmp_path / "r.html").exists()
    forced = run_cli("compare", a, other, "--force", "--no-replay")
    assert forced.returncode == 0 and "NOT COMPARABLE" in forced.stdout
    # blocks.0.attn.weights is canonical for A's model; A just did not record it (default taps).
    assert (
        "blocks.0.attn.weights is only in B: it is a canonical op of A's model, but A did not record it"
        in forced.stdout
    )
    assert "no canonical op of A" not in forced.stdout
    assert run_cli("check", a, other, "--force", "--no-replay").returncode in (0, 1)


# -- 4. one cap for every WER ----------------------------------------------------------------------
def test_a_stored_transcript_is_capped_exactly_as_a_capped_decode(default_trace, tiny_en):
    from whisperdiff.capture.transcript import Decoder, capped, token_cap

    decoder = Decoder(tiny_en)
    reference = decoder(np.asarray(default_trace["ln_post"]))
    x = np.asarray(default_trace["blocks.3.out"], np.float32)
    features = (x - x.mean()) / x.std()  # ln_post as one whole-tensor rescale: the decoder loops
    cap = token_cap(reference)
    full, short = decoder(features), decoder(features, max_tokens=cap)
    assert full != short  # the uncapped decode runs past the cap
    assert capped(full, cap) == short  # what compare does to a stored transcript is what patch decodes


def test_compare_and_patch_report_the_same_wer(tmp_path, tiny_en):
    a = wd.trace("torch", model=tiny_en, out=tmp_path / "a", taps="output", transcribe=True)
    b = wd.trace("torch", model=tiny_en, out=tmp_path / "b", taps="output", transcribe=True, inject=["mel-frontend"])
    from whisperdiff.experiments.patch import patch

    c = wd.compare(a, b, replay=False)
    p = patch(a, b, ops="mel")
    assert c.transcripts["max_tokens"] == p.max_tokens
    assert c.transcripts["wer"] == pytest.approx(p.unpatched_wer)
    proc = run_cli("compare", str(a.path), str(b.path), "--no-replay", check=True)
    assert f"B decoded up to {p.max_tokens} tokens" in proc.stdout  # the cap is stated next to the WER
    from whisperdiff.present.report import render

    page = render(c, patching=p)  # the transcripts and the patching chart, each WER with the same cap
    assert (
        page.count(f"B decoded up to {p.max_tokens} tokens") >= 2 and "Which op causes it: activation patching" in page
    )


# -- 5. terse compare ------------------------------------------------------------------------------
def test_compare_is_terse_by_default_and_complete_with_all(runs):
    a, bug, output = str(runs["a"].path), str(runs["bug"].path), str(runs["output"].path)
    n_ops = len(runs["a"].ops)
    terse = run_cli("compare", a, bug, check=True).stdout
    shown = [op for op in runs["a"].ops if re.search(rf"│ {re.escape(op)} +│", terse)]
    assert shown[:2] == ["mel", "conv1"] and len(shown) < n_ops / 2, shown  # the introducer and its neighbour
    assert re.search(r"\d+ ops not shown: \d+ diverged, error inherited .*-v/--all shows every op", terse)
    assert "cosine ≥ 0.99999, rel L2 ≤ 0.0001" in terse  # the limits, as numbers
    assert terse.strip().splitlines()[-2].startswith(f"next: whisperdiff report {a} {bug}")
    full = run_cli("compare", a, bug, "-v", check=True).stdout
    assert all(re.search(rf"│ {re.escape(op)} +│", full) for op in runs["a"].ops)
    out_only = run_cli("compare", a, output, "--no-replay", check=True).stdout
    rows = [line for line in out_only.splitlines() if line.startswith("│")]
    assert len(rows) <= 3 and not any("not traced" in row for row in rows), rows  # not 53 "not traced" rows
    assert f"{n_ops} ops not shown: 2 within tolerance, {n_ops - 2} not traced" in out_only, out_only


# -- 6. notebook -----------------------------------------------------------------------------------
def test_notebook_api(runs, tmp_path):
    from matplotlib.figure import Figure

    c = wd.compare(runs["a"], runs["bug"])
    row = c.table.loc["ln_post"]
    assert row["op"] == "ln_post" and row["status"] == "diverged"
    summary = runs["a"].summary()
    assert summary.loc["ln_post", "op"] == "ln_post" and "op" in c.table.columns  # one column name in both
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()  # a real IPython shell: what a notebook's kernel runs
    wd._register_notebook_display()  # what `import whisperdiff` does inside IPython
    html = shell.display_formatter.format(c)[0]["text/html"]
    assert "B diverges from A first at mel" in html and "input_mismatch" in html and "<table" in html
    assert "tensor_sha256" not in html and len(html) < 60_000  # a short table, not the manifests
    assert isinstance(wd.plot(c), Figure) and isinstance(wd.plot(c, "statistics"), Figure)
    r = wd.check(runs["a"], runs["bug"], wd.load_tolerances("float32"))
    r_html = shell.display_formatter.format(r)[0]["text/html"]
    assert "FAIL" in r_html and "mel" in r_html
    t_html = shell.display_formatter.format(runs["a"])[0]["text/html"]
    assert str(runs["a"].path) in t_html and "weights sha256" in t_html and "tensor_sha256" not in t_html
    assert len(t_html) < 20_000


def test_assert_traces_close_points_at_the_callers_line(runs, tmp_path):
    test = tmp_path / "test_port.py"
    test.write_text(
        "from whisperdiff.gate.testing import assert_traces_close\n\n"
        "def test_port():\n"
        f"    assert_traces_close({str(runs['a'].path)!r}, {str(runs['bug'].path)!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 1 and "FAIL:" in proc.stdout and "first failure: mel" in proc.stdout, proc.stdout
    assert "gate/testing.py" not in proc.stdout and "test_port.py:4" in proc.stdout


# -- 7. CLI conventions ----------------------------------------------------------------------------
def test_version_and_short_help():
    proc = run_cli("--version", check=True)
    assert proc.stdout.strip() == f"whisperdiff {wd.__version__}"
    for args in (["-h"], ["compare", "-h"], ["golden", "save", "-h"]):
        proc = run_cli(*args, check=True)
        assert proc.stdout.startswith("Usage:"), args


def test_every_option_has_help_and_shows_its_choices():
    import typer

    from whisperdiff.present.cli import app

    group = typer.main.get_command(app)
    commands = {}
    for name, command in group.commands.items():
        for sub_name, sub in getattr(command, "commands", {name: command}).items():
            commands[f"{name} {sub_name}" if sub is not command else name] = sub
    for name, command in commands.items():
        for param in command.params:
            if getattr(param, "hidden", False) or param.param_type_name != "option":
                continue
            assert param.help, f"whisperdiff {name} {param.opts[0]} has no help text"
        helptext = run_cli(*name.split(), "--help", check=True).stdout
        options = "\n".join(line for line in helptext.splitlines() if line.lstrip().startswith("-"))
        assert not re.search(r"<(str|bool|list\[str\])>", options) and ", ," not in helptext, (name, helptext)
    trace_help = " ".join(run_cli("trace", "--help", check=True).stdout.split())  # unwrapped
    for choice in (
        "<auto|cpu|cuda|gpu>",
        "<float32|float16|bfloat16|float64>",
        "<default|all|output|GLOBS>",
        "n_mels x 3000",
    ):
        assert choice in trace_help, choice
    for command in (["report"], ["tolerances"], ["golden", "save"], ["trace"], ["transcribe"]):
        helptext = run_cli(*command, "--help", check=True).stdout
        assert "-o, --out" in helptext and "--output" not in helptext, command  # one spelling; --output still works


def test_dtype_aliases_inject_did_you_mean_and_output_alias(runs, small_random, tmp_path):
    proc = run_cli(
        "trace", "-m", SMALL_RANDOM, "--dtype", "bf16", "--taps", "output", "-o", str(tmp_path / "bf16"), check=True
    )
    assert wd.load_trace(tmp_path / "bf16").manifest["dtype"] == "bfloat16", proc.stdout
    assert_one_line_error(run_cli("trace", "--inject", "missing-lnpost"), "did you mean 'missing-ln-post'")
    assert_one_line_error(run_cli("trace", "--dtype", "fp17"), "fp16")
    out = tmp_path / "old-spelling.toml"
    run_cli("tolerances", str(runs["a"].path), "--from", str(runs["clean"].path), "--output", str(out), check=True)
    assert out.read_text().startswith("#")


def test_ls_finds_traces_in_subfolders(small_random, tmp_path):
    for where in ("x/one", "x/y/two"):
        wd.trace("torch", model=small_random, out=tmp_path / where, taps="output")
    proc = run_cli("ls", str(tmp_path), "--json", check=True)
    import json

    assert sorted(Path(row["trace"]).name for row in json.loads(proc.stdout)["traces"]) == ["one", "two"]


# -- 8. progress with totals -----------------------------------------------------------------------
def test_progress_bars_have_totals(runs, tmp_path):
    n = len(runs["a"].ops)
    code, text = _terminal("trace", "-m", SMALL_RANDOM, "-o", str(tmp_path / "t"), cwd=tmp_path)
    assert code == 0 and f"{n}/{n}" in text and "/?" not in text.split("loading model")[-1], text
    code, text = _terminal("compare", str(runs["a"].path), str(runs["clean"].path), cwd=tmp_path)
    assert code == 0 and f"{n}/{n}" in text, text
    code, text = _terminal("tolerances", str(runs["a"].path), cwd=tmp_path)
    assert code == 0 and "float64 re-run" in text and f"{n}/{n}" in text, text
    code, text = _terminal(
        "report", str(runs["a"].path), str(runs["bug"].path), "-o", str(tmp_path / "r.html"), cwd=tmp_path
    )
    assert code == 0 and re.search(r"plotting .* (\d+)/\1", text), text


# -- 10. packaging ---------------------------------------------------------------------------------
def test_ranges_in_the_package_exact_versions_in_the_constraints():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if "==" in d], deps
    assert any(d.lower().startswith("jinja2") for d in deps) and "torch>=2.4,<3" in deps
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in ("torch", "openai-whisper", "max", "numpy", "pandas", "matplotlib", "rich", "typer", "Jinja2"):
        assert version(name).split("+")[0] == pins[name], (name, version(name), pins[name])  # tested = installed
    readme_first = next(line for line in (ROOT / "README.md").read_text().splitlines() if "pip install" in line)
    assert "-c constraints.txt" in readme_first and "&& whisperdiff trace" in readme_first
    assert re.search(r"pip install .*-c constraints\.txt -e \"\.\[dev", (ROOT / ".ci/run").read_text())
