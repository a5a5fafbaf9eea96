"""The report's figures, as matplotlib Figures (the notebook shows them; the report embeds them).

Every function takes plain arrays or the comparison table and returns a `matplotlib.figure.Figure`
built without pyplot, so nothing here touches a global backend (a notebook's inline backend stays
as it was). `render(fig, fmt)` turns one into (mime type, bytes) for the HTML report: SVG for line
charts, PNG for images. Nothing here reads a trace.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import signal
from contextlib import nullcontext

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path
from matplotlib.ticker import FuncFormatter, LogFormatter

from whisperdiff.errors import WhisperdiffError

STYLE = {
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "whisperdiff",
}
A_COLOR, B_COLOR, BAD, INTRO, GOOD = "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#2e9e49"
FLOOR = 1e-12  # log scales cannot show 0: exact zeros are drawn as their own marker at the floor
WIDTH = 12.6  # inches at 100 dpi: fits the report's 1400 px page with its margins


def label(text) -> str:
    """Op names come from traces: never let matplotlib read "$...$" in them as math."""
    return str(text).replace("$", r"\$")


def render(fig: Figure, fmt: str = "svg", tight: bool = False) -> tuple[str, bytes]:
    """(mime type, bytes). The figures here set their own margins (`_margins`), so they are drawn once;
    tight=True (for figures laid out elsewhere) crops to the drawn extent, which lays a figure out twice."""
    buf = io.BytesIO()
    # png: zlib level 1, as a noisy heatmap takes several times longer at the default 6 for a little less size
    extra = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {"metadata": {"Date": None}}
    with rc_context(STYLE):  # svg.fonttype and svg.hashsalt are read when saving, not when the figure is built
        fig.savefig(buf, format=fmt, dpi=100 if fmt == "png" else None, bbox_inches="tight" if tight else None, **extra)
    return ("image/svg+xml" if fmt == "svg" else "image/png"), buf.getvalue()


_JOBS: list = []  # what forked workers draw, by index: inherited from the parent, never pickled


def _draw(i: int) -> tuple[str, bytes]:
    make, fmt = _JOBS[i]
    return render(make(), fmt)


def _plain_signals() -> None:
    """A forked worker's signals: SIGTERM (the pool's terminate) ends it at once and SIGINT is the parent's.
    It inherits the CLI's handlers, which write a line first and can wait forever on a stream lock that
    another thread of the parent held at the fork (a pool that never finished joining hung a CI run)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def draw_all(jobs: list, on_done=None) -> list[tuple[str, bytes]]:
    """[(make, fmt)] -> [(mime type, bytes)], in order; make() builds one Figure. Building and drawing the
    figures is most of a report's cost and each is independent, so where the platform forks and more than
    one core is ours, forked workers do them (they inherit the data; only the bytes come back pickled)."""
    global _JOBS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(len(jobs), cores, 4)
    # a daemon process (a pool's worker) may not have children
    forks = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    _JOBS = jobs
    try:
        parallel = workers > 1 and forks
        with multiprocessing.get_context("fork").Pool(workers, _plain_signals) if parallel else nullcontext() as pool:
            images = []
            for image in (pool.imap if pool is not None else map)(_draw, range(len(jobs))):
                images.append(image)
                if on_done is not None:
                    on_done()
            return images
    finally:
        _JOBS = []


def _margins(fig: Figure, left: float = 0.75, right: float = 0.15, top: float = 0.15, bottom: float = 0.5) -> None:
    """Margins in inches, set before drawing: bbox_inches="tight" would draw each figure twice to find
    them, which was most of a report's cost. Call before adding colorbars (they take space from the axes)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)


def _text_inches(texts, size: float) -> float:
    """The width of the widest text at `size` points, in inches (font metrics only, nothing drawn)."""
    prop = FontProperties(size=size)
    widths = [text_to_path.get_text_width_height_descent(str(t), prop, ismath=False)[0] for t in texts]
    return max(widths, default=0.0) / 72


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _decade(value: float, _pos=None) -> str:
    """10⁻⁶ as plain text: matplotlib's default log labels are mathtext, parsed label by label."""
    if value <= 0 or not math.isfinite(value):
        return ""
    exponent = round(math.log10(value))
    if abs(value / 10.0**exponent - 1) > 1e-9:
        return f"{value:.0e}"
    return "1" if exponent == 0 else "10" + str(exponent).translate(_SUPERSCRIPT)


def _log_axis(axis) -> None:
    """Decade labels as plain text; between decades (plain LogFormatter) only when the axis spans few."""
    axis.set_major_formatter(FuncFormatter(_decade))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def _op_axis(ax, names: list[str], mark: str | None, labelled: bool = True) -> float:
    """Op names under the x axis; every k-th when there are too many to read, always the marked one.
    Returns the inches the (vertical) names take below the axis. labelled=False: the mark only, for the
    upper of two stacked axes (not sharing x, which would share the ticks: it sets the same limits)."""
    step = max(1, math.ceil(len(names) / 90))
    ticks = sorted({i for i in range(0, len(names), step)} | ({names.index(mark)} if mark in names else set()))
    texts = [label(names[i]) for i in ticks]
    if labelled:
        ax.set_xticks(ticks, texts, rotation=90, fontsize=6.5)
    else:  # no ticks: matplotlib makes five artists per tick, most of a figure's cost
        ax.set_xticks([])
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.grid(False, axis="x")  # a line per op is noise, and most of the figure's drawing
    if mark in names:
        ax.axvline(names.index(mark), color=BAD, lw=1.2, ls="--")
    return _text_inches(texts, 6.5) + 0.12 if labelled else 0.0


def _log_series(ax, x, values, style: str, color: str, name: str, **kw) -> None:
    """A log-scale series whose exact zeros show as hollow markers on the floor, labelled as such."""
    values = np.asarray(values, float)
    zero = values == 0
    ax.plot(x, np.where(zero, np.nan, values), style, color=color, label=name, **kw)
    if zero.any():
        ax.plot(x[zero], np.full(zero.sum(), FLOOR), "o", mfc="none", color=color, ms=5, label=f"{name}: exactly 0")


def divergence(table: pd.DataFrame, first: str | None, min_cosine: float | None, max_rel_l2: float | None) -> Figure:
    """Relative L2 error and 1 - cosine per op (log scale), with the error each op introduces as bars."""
    names = table["op"].tolist()
    x = np.arange(len(names))
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 4.4))
        ax = fig.subplots()
        intro = table["introduced_rel_l2"].to_numpy(float)
        if np.isfinite(intro).any():
            shown = np.where(np.isfinite(intro) & (intro > 0), intro, np.nan)
            ax.bar(x, shown, color=INTRO, alpha=0.45, width=0.8, label="introduced by the op (replayed on B's inputs)")
        rel = table["rel_l2"].to_numpy(float)
        _log_series(ax, x, rel, "o-", A_COLOR, "relative L2 error (total)", ms=3)
        _log_series(
            ax, x, np.clip(1 - table["cosine"].to_numpy(float), 0, 2), "s-", B_COLOR, "1 - cosine", ms=2.5, lw=1
        )
        missing = np.isnan(rel) & table["status"].isin(["missing_in_b", "missing_in_a", "shape_mismatch"]).to_numpy()
        if missing.any():
            ax.plot(x[missing], np.full(missing.sum(), 1.0), "x", color=BAD, ms=8, mew=2, label="missing or unmatched")
        if max_rel_l2 is not None:
            ax.axhline(max_rel_l2, color=A_COLOR, ls=":", lw=1, label=f"tolerance rel L2 {max_rel_l2:g}")
        if min_cosine is not None:
            ax.axhline(1 - min_cosine, color=B_COLOR, ls=":", lw=1, label=f"tolerance 1 - cosine {1 - min_cosine:.0e}")
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        top = np.nanmax(np.concatenate([rel, [1.0]]))
        ax.set_ylim(FLOOR / 2, 10 ** math.ceil(math.log10(max(top, 1.0)) + 1))
        ax.set_ylabel("error (log scale)")
        below = _op_axis(ax, names, first)
        if first in names:
            ax.annotate(
                label(f"first divergence: {first}"),
                (names.index(first), ax.get_ylim()[1] / 3),
                color=BAD,
                fontsize=9,
                ha="right" if names.index(first) > len(names) / 2 else "left",
                xytext=(4, 0),
                textcoords="offset points",
            )
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), fontsize=7.5, ncol=4, frameon=False)
        rows = math.ceil(len(ax.get_legend_handles_labels()[0]) / 4)
        _margins(fig, left=0.7, top=0.1 + 0.19 * rows, bottom=below + 0.05)
        return fig


def _band_limits(ax, deviation: np.ndarray, centre: float, band: float | None, floor: float | None = None) -> None:
    """y limits that show the tolerance band and every point, never zoomed into float noise."""
    dev = np.abs(deviation[np.isfinite(deviation)])
    span = max(3 * (band or 0), 1.15 * (dev.max() if dev.size else 0), 1e-3)
    ax.set_ylim(centre - span if floor is None else max(floor, centre - span), centre + span)


def statistics(
    table: pd.DataFrame, first: str | None, max_rel_l2: float | None = None, max_std_ratio_dev: float | None = None
) -> Figure:
    """Per op, B's std as a ratio of A's and B's mean shift in units of A's std, against the tolerance.

    A shift of the mean or of the spread alone already gives a relative L2 error of at least
    |shift| x std A / RMS A, so the band drawn is the rel L2 limit in those units (or the std-ratio
    limit when the tolerances set one). Outside the band: a normalisation or scale is wrong."""
    names = table["op"].tolist()
    x = np.arange(len(names))
    std_a, std_b = table["std_a"].to_numpy(float), table["std_b"].to_numpy(float)
    mean_a, mean_b = table["mean_a"].to_numpy(float), table["mean_b"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = std_b / std_a
        shift = (mean_b - mean_a) / std_a
        rms_over_std = np.sqrt(std_a**2 + mean_a**2) / std_a
    band = (
        max_rel_l2 * np.nanmedian(rms_over_std) if max_rel_l2 is not None and np.isfinite(rms_over_std).any() else None
    )
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 5.0))
        top, bottom = fig.subplots(2, 1)  # not sharex: _op_axis gives both the same limits, the names below only
        for ax, values, centre, limit, ylabel in (
            (top, ratio, 1.0, max_std_ratio_dev or band, "std B / std A"),
            (bottom, shift, 0.0, band, "(mean B - mean A) / std A"),
        ):
            if limit is not None:
                ax.axhspan(
                    centre - limit, centre + limit, color=GOOD, alpha=0.15, lw=0, label=f"tolerance ±{limit:.2g}"
                )
            ax.axhline(centre, color="#888", lw=0.8)
            outside = np.abs(values - centre) > (limit if limit is not None else np.inf)
            ax.plot(x, values, "o-", ms=3, color=A_COLOR, lw=1)
            if outside.any():
                ax.plot(x[outside], values[outside], "o", ms=5, color=BAD, label="outside the tolerance")
            _band_limits(ax, values - centre, centre, limit, floor=0.0 if centre == 1.0 else None)  # a ratio is >= 0
            ax.set_ylabel(ylabel)
            ax.legend(loc="upper left", fontsize=7.5, ncol=2)
            below = _op_axis(ax, names, first, labelled=ax is bottom)
        _margins(fig, left=1.0, top=0.1, bottom=below + 0.05)
        return fig


def histograms(a: np.ndarray, b: np.ndarray, op: str) -> Figure:
    """Overlaid value histograms (log counts) over a range both sides share."""
    fa, fb = _sample(a), _sample(b)
    fa, fb = fa[np.isfinite(fa)], fb[np.isfinite(fb)]
    both = _sample(np.concatenate([fa, fb]), 500_000)  # the range only: 0.02 % of it is still 100 values
    lo, hi = np.percentile(both, [0.02, 99.98]) if both.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    bins = np.linspace(lo, hi, 121)
    with rc_context(STYLE):
        fig = Figure(figsize=(6.2, 3.6))
        ax = fig.subplots()
        # bins=count with a range: numpy's uniform-bin path, which needs no sort of the values (an edge array does)
        count = lambda x: np.histogram(np.clip(x, lo, hi), len(bins) - 1, (lo, hi))[0]  # noqa: E731
        ax.stairs(count(fa), bins, fill=True, alpha=0.35, color=A_COLOR, label="A")
        ax.stairs(count(fb), bins, lw=1.4, color=B_COLOR, label="B")
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.set_xlabel(label(f"value of {op} (tails clipped to the shared 0.02-99.98 percentile range)"))
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
        _margins(fig, left=0.65, right=0.2, top=0.1, bottom=0.5)
        return fig


def error_heatmap(err_tc: np.ndarray, op: str, audio_steps: int | None) -> Figure:
    """|B - A| over time step x channel (log colour), `err_tc` shaped [T, C]; exact zeros in grey."""
    t, c = err_tc.shape
    zeros = int((err_tc == 0).sum()) / max(err_tc.size, 1)
    err_tc = _max_pool(err_tc, (1100, 280))  # about one cell per pixel; max, so no spike is lost
    finite = err_tc[np.isfinite(err_tc) & (err_tc > 0)]
    top = float(finite.max()) if finite.size else 1.0
    norm = LogNorm(vmin=max(top * 1e-6, FLOOR), vmax=max(top, 2 * FLOOR))
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(WIDTH, 3.6))
        ax = fig.subplots()
        _margins(fig, left=0.65, right=0.15, top=0.3, bottom=0.5)
        shown = np.ma.masked_where(err_tc.T == 0, np.maximum(err_tc.T, norm.vmin))
        cmap = _cmap("magma")
        im = ax.imshow(
            shown, aspect="auto", origin="lower", norm=norm, cmap=cmap, interpolation="nearest", extent=(0, t, 0, c)
        )
        if audio_steps and audio_steps < t:
            ax.axvline(audio_steps, color="#00e5ff", lw=1, ls="--")
            ax.text(audio_steps, c * 0.97, " audio ends, padding after", color="#00e5ff", va="top", fontsize=8)
        ax.set_xlabel("time step")
        ax.set_ylabel("channel")
        ax.set_title(
            label(f"|B - A| at {op}" + (f" (grey: exactly 0, {zeros:.0%} of cells)" if zeros else "")),
            fontsize=9,
        )
        _log_axis(fig.colorbar(im, ax=ax, pad=0.01, label="absolute error").ax.yaxis)
        return fig


def _max_pool(x: np.ndarray, limits: tuple[int, int]) -> np.ndarray:
    """Max over blocks so each axis has at most its limit of cells; the last block may be short."""
    for axis, limit in enumerate(limits):
        pool = math.ceil(x.shape[axis] / limit)
        if pool > 1:
            x = np.maximum.reduceat(x, np.arange(0, x.shape[axis], pool), axis=axis)
    return x


def _cmap(name: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#bbbbbb")  # masked cells: exact zeros


def step_error(
    step_rel_error: np.ndarray, step_cosine: np.ndarray, op: str, audio_steps: int | None, within: bool | None = None
) -> Figure:
    """Relative error and cosine per time step: padding and positional bugs show as a slope or a step.

    The cosine axis never zooms in past 0.99..1, so a flat cosine of 1.0 stays a flat line at the top."""
    x = np.arange(len(step_rel_error))
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 3.0))
        ax = fig.subplots()
        _log_series(ax, x, step_rel_error, "-", BAD, "relative error of the time step", lw=0.8)
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.set_ylabel("relative error (log)")
        ax.set_xlabel("time step")
        ax2 = ax.twinx()
        ax2.plot(x, step_cosine, lw=0.8, color=A_COLOR, alpha=0.7, label="cosine of the time step")
        finite = np.asarray(step_cosine, float)[np.isfinite(step_cosine)]
        low = min(float(finite.min()) if finite.size else 1.0, 0.99)
        ax2.set_ylim(low - 0.02 * (1.0 - low), 1.0 + 0.05 * (1.0 - low))
        ax2.set_ylabel("cosine")
        ax2.grid(False)
        if audio_steps and audio_steps < len(x):
            ax.axvline(audio_steps, color="k", lw=1, ls="--")
            ax.text(audio_steps, ax.get_ylim()[1], " audio ends", va="top", fontsize=8)
        lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=7.5)
        verdict = "" if within is None else " (within tolerance)" if within else " (out of tolerance)"
        ax.set_title(label(f"error per time step at {op}{verdict}"), fontsize=9, color=GOOD if within else "black")
        _margins(fig, left=0.75, right=0.8, top=0.3, bottom=0.5)
        return fig


def attention(pa: np.ndarray, pb: np.ndarray, op: str, head: int) -> Figure:
    """One head's softmax probabilities [T_q, T_k]: A, B and |B - A| side by side."""
    diff = np.abs(pb.astype(np.float64) - pa)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(WIDTH, 4.2))
        axes = fig.subplots(1, 3)
        _margins(fig, left=0.6, right=0.75, top=0.3, bottom=0.5)
        vmax = float(max(np.nanmax(pa), np.nanmax(pb), 1e-12))
        norm = LogNorm(vmin=vmax * 1e-5, vmax=vmax)
        for ax, data, title in ((axes[0], pa, "A"), (axes[1], pb, "B")):
            im = ax.imshow(np.maximum(data, norm.vmin), norm=norm, cmap="viridis", interpolation="nearest")
            ax.set_title(label(f"{title}: {op}, head {head}"), fontsize=9)
            ax.set_xlabel("key step")
            ax.set_ylabel("query step")
        _log_axis(fig.colorbar(im, ax=axes[:2], pad=0.01, shrink=0.85, label="probability (log)").ax.yaxis)
        positive = diff[np.isfinite(diff) & (diff > 0)]
        top = float(positive.max()) if positive.size else 1.0
        dn = LogNorm(vmin=max(top * 1e-5, FLOOR), vmax=max(top, 2 * FLOOR))
        im = axes[2].imshow(
            np.ma.masked_where(diff == 0, np.maximum(diff, dn.vmin)),
            norm=dn,
            cmap=_cmap("magma"),
            interpolation="nearest",
        )
        axes[2].set_title(f"|B - A|, head {head}" + (" (grey: exactly 0)" if (diff == 0).any() else ""), fontsize=9)
        axes[2].set_xlabel("key step")
        _log_axis(fig.colorbar(im, ax=axes[2], pad=0.01, shrink=0.85, label="absolute difference").ax.yaxis)
        return fig


def _sample(x: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    flat = np.asarray(x).reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step].astype(np.float64)


def patching(ops: list[str], restored: list[float], cause: str | None, threshold: float = 0.9) -> Figure:
    """Per patched op, the share of B's final error that substituting A's value there removes: the
    cause is the earliest tallest bar, at or above `threshold` (the line)."""
    x = np.arange(len(ops))
    shares = np.clip(np.asarray(restored, float), -0.5, 1.0) * 100
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 3.8))
        ax = fig.subplots()
        colours = [BAD if op == cause else A_COLOR for op in ops]
        ax.bar(x, shares, color=colours, width=0.7)
        ax.axhline(threshold * 100, color="k", ls="--", lw=1, label=f"restored: {threshold:.0%} of the error gone")
        ax.set_ylim(min(0, shares.min() - 5) if shares.size else 0, 105)
        ax.set_ylabel("% of B's final error restored")
        ax.set_xticks(x)
        texts = [label(op) for op in ops]
        ax.set_xticklabels(texts, rotation=90, fontsize=7)
        ax.legend(loc="upper left", fontsize=8)
        if cause in ops:
            ax.set_title(label(f"patching {cause} restores the output: the cause"), fontsize=9, color=BAD)
        _margins(fig, left=0.75, top=0.3, bottom=_text_inches(texts, 7) + 0.17)
        return fig


def positions(
    step_errors: dict[str, np.ndarray],
    kl: list[float] | None,
    argmax_changes: list[int],
    first: tuple[str, int] | None = None,
) -> Figure:
    """Decoder traces: relative error per token position of the logits and of each block's output (top),
    KL(A || B) of the next-token distributions per position with the positions whose argmax differs (bottom).
    A KV-cache or position bug starts at the position where it acts; an encoder-side error is there from 0."""
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 5.2 if kl is not None else 3.0))
        axes = fig.subplots(2 if kl is not None else 1, 1, sharex=True, squeeze=False)[:, 0]
        ax = axes[0]
        for i, (op, err) in enumerate(step_errors.items()):
            x = np.arange(len(err))
            style = "-" if op == "decoder.logits" else ":"
            _log_series(
                ax,
                x,
                np.asarray(err, float),
                style,
                BAD if op == "decoder.logits" else f"C{i % 10}",
                op,
                marker=".",
                lw=1.2 if op == "decoder.logits" else 0.8,
            )
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.set_ylabel("relative error (log)")
        ax.legend(loc="upper left", fontsize=7, ncol=3)
        if first is not None:
            ax.axvline(first[1], color=BAD, ls="--", lw=1)
            ax.set_title(
                label(f"error per token position; first divergence {first[0]} at position {first[1]}"), fontsize=9
            )
        else:
            ax.set_title("error per token position", fontsize=9)
        if kl is not None:
            axk = axes[1]
            x = np.arange(len(kl))
            axk.plot(
                x,
                np.maximum(np.asarray(kl, float), FLOOR),
                "-o",
                ms=3,
                color=B_COLOR,
                label="KL(A || B) of the next token",
            )
            for p in argmax_changes:
                axk.axvline(p, color=BAD, alpha=0.3, lw=4)
            axk.set_yscale("log")
            _log_axis(axk.yaxis)
            axk.set_ylabel("KL (log)")
            axk.legend(
                loc="upper left",
                fontsize=7.5,
                title="shaded: argmax differs" if argmax_changes else None,
                title_fontsize=7.5,
            )
        axes[-1].set_xlabel("token position")
        _margins(fig, left=0.75, top=0.3, bottom=0.5)
        return fig


PLOT_KINDS = ("divergence", "statistics", "histogram", "heatmap", "steps", "attention")


def plot(c, kind: str = "divergence", op: str | None = None, head: int | None = None) -> Figure:
    """One figure of a Comparison: kind "divergence" (error per op), "statistics" (std ratio and mean
    shift per op), or for one op (default: the first divergence) "histogram", "heatmap", "steps", "attention"."""
    t = c.tolerance
    if kind == "divergence":
        return divergence(c.table, c.first_divergence, t.min_cosine, t.max_rel_l2)
    if kind == "statistics":
        return statistics(c.table, c.first_divergence, t.max_rel_l2, t.max_std_ratio_dev)
    if kind not in PLOT_KINDS:
        raise WhisperdiffError(f"plot kind {kind!r}: use one of {', '.join(PLOT_KINDS)}")
    op = op or c.first_divergence or str(c.table["rel_l2"].idxmax())
    a, b = c.values(op)
    if kind == "histogram":
        return histograms(a, b, op)
    if kind == "attention":
        if a.ndim != 4:
            raise WhisperdiffError(f"{op} is not an attention-probability op (blocks.N.attn.weights)")
        head = int(np.argmax(np.abs(b[0].astype(np.float64) - a[0]).sum(axis=(1, 2)))) if head is None else head
        return attention(np.asarray(a[0, head]), np.asarray(b[0, head]), op, head)
    if kind == "steps":
        profile = c.profiles[op]
        return step_error(profile["step_rel_error"], profile["step_cosine"], op, None, not c.result(op).diverged)
    layout = c.result(op).layout or ""
    err = np.abs(b.astype(np.float64) - a)
    if err.ndim != 3 or not (layout.startswith("B,T,") or layout.endswith((",T", ",T_in"))):
        raise WhisperdiffError(f"{op} has no time x channel layout to draw as a heatmap")
    return error_heatmap(err[0] if layout.startswith("B,T,") else err[0].T, op, None)
