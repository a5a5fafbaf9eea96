"""The Python API end to end, as notebook cells (`# %%`: VS Code, Jupyter's jupytext and Spyder run
them one by one; `python examples/notebook.py [OUT_DIR]` runs them all).

A notebook shows a cell's last value: a Trace, a Comparison and a CheckResult show their verdict and
a short table (IPython shows it: present/notebook.py), `wd.plot(c)` a matplotlib Figure. Run as a script, each cell prints
what a notebook would show and writes the HTML of those cells to OUT_DIR/cells.html, so you can
see them in a browser. Set WHISPERDIFF_NOTEBOOK_IMPL=torch to skip MAX (the planted bug then acts
on the input instead: mel-frontend).
"""

# %% Set-up
import os
import sys
from pathlib import Path

import whisperdiff as wd
from whisperdiff.present.notebook import to_html

out = Path(sys.argv[1] if len(sys.argv) > 1 else "notebook-out")
impl = os.environ.get("WHISPERDIFF_NOTEBOOK_IMPL", "max")
bug = "missing-ln-post" if impl == "max" else "mel-frontend"
cells: list[tuple[str, str]] = []  # (title, HTML) as a notebook would render each cell's result


def show(title: str, value) -> None:
    """What a notebook does with a cell's last value: its HTML if it has one, else its repr."""
    html = to_html(value) or f"<pre>{value!r}</pre>"
    cells.append((title, html))
    print(f"--- {title}\n{value!r}\n")


print(f"whisperdiff {wd.__version__}")

# %% Trace the reference (openai-whisper on the embedded tiny.en and the shipped clip) and a buggy port
a = wd.trace("torch", out=out / "torch")
b = wd.trace(impl, out=out / f"{impl}+{bug}", inject=[bug])
show("a (the reference trace)", a)

# %% Per-op statistics of one trace: a pandas DataFrame indexed by op name
stats = a.summary()
print(stats.loc["ln_post", ["shape", "mean", "std"]], "\n")

# %% Compare: the first divergent op, what is wrong there, and the table (indexed by op, as summary())
c = wd.compare(a, b)
show("c = wd.compare(a, b)", c)
print("first divergence:", c.first_divergence)
print("top finding:", c.findings[0].kind, "at", c.findings[0].op, "-", c.findings[0].message[:120], "...")
print(c.table.loc["ln_post", ["status", "cosine", "rel_l2", "introduced_rel_l2"]], "\n")
print("diverged ops:", len(c.table[c.table["diverged"]]), "of", len(c.table), "\n")

# %% Plots are matplotlib Figures: shown inline in a notebook, saved here
for kind in ("divergence", "statistics", "histogram"):
    fig = wd.plot(c, kind)
    fig.savefig(out / f"plot-{kind}.png", dpi=80, bbox_inches="tight")
    print(f"wd.plot(c, {kind!r}) -> {type(fig).__name__} with {len(fig.axes)} axes, saved {out / f'plot-{kind}.png'}")

# %% Gate it: check against the shipped float32 tolerances (what CI runs)
r = wd.check(a, b, wd.load_tolerances("float32"))
show("r = wd.check(a, b, float32)", r)
print("passed:", r.passed, "- first failure:", r.first_failure, "\n")

# %% The same as a test would: assert_traces_close raises with the failing ops listed
try:
    wd.assert_traces_close(a, b, "float32")
except AssertionError as e:
    print("assert_traces_close:", str(e).splitlines()[0], "\n")

# %% The whole story as one HTML page
report = wd.write_report(c, out / "report.html")
print("report:", report)

# %% What the notebook showed, as one page
page = out / "cells.html"
page.write_text(
    "<!DOCTYPE html><meta charset=utf-8><title>whisperdiff notebook cells</title><body style='font:14px sans-serif'>"
    + "".join(f"<h3>{title}</h3>{html}" for title, html in cells)
    + "</body>"
)
print("notebook cells:", page)
