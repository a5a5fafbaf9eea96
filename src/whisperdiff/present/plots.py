"""The report's figures: matplotlib, rendered off-screen to SVG (line charts) or PNG (images) bytes.

Every function takes plain arrays or the comparison table and returns (mime type, bytes), so the
report only has to embed them. Nothing here reads a trace.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # off-screen; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "whisperdiff"}  # fmt: skip
A_COLOR, B_COLOR, BAD, INTRO = "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c"
FLOOR = 1e-12  # log scales cannot show 0


def label(text) -> str:
    """Op names come from traces: never let matplotlib read "$...$" in them as math."""
    return str(text).replace("$", r"\$")


def _render(fig, fmt: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100 if fmt == "png" else None, bbox_inches="tight", metadata={"Date": None}
                if fmt == "svg" else None)  # fmt: skip
    plt.close(fig)
    return ("image/svg+xml" if fmt == "svg" else "image/png"), buf.getvalue()


def _op_axis(ax, names: list[str], mark: str | None) -> None:
    """Op names under the x axis; every k-th when there are too many to read, always the marked one."""
    step = max(1, math.ceil(len(names) / 90))
    ticks = sorted({i for i in range(0, len(names), step)} | ({names.index(mark)} if mark in names else set()))
    ax.set_xticks(ticks)
    ax.set_xticklabels([label(names[i]) for i in ticks], rotation=90, fontsize=6.5)
    ax.set_xlim(-0.5, len(names) - 0.5)
    if mark in names:
        ax.axvline(names.index(mark), color=BAD, lw=1.2, ls="--")


def divergence(table: pd.DataFrame, first: str | None, min_cosine: float | None, max_rel_l2: float | None) -> tuple[str, bytes]:
    """Relative L2 error and 1 - cosine per op (log scale), with the error each op introduces as bars."""
    names = table["name"].tolist()
    x = np.arange(len(names))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(13, 4.6))
        intro = table["introduced_rel_l2"].to_numpy(float)
        if np.isfinite(intro).any():
            ax.bar(x, np.where(np.isfinite(intro), np.maximum(intro, FLOOR), np.nan), color=INTRO, alpha=0.45,
                   width=0.8, label="introduced by the op (replayed on B's inputs)")  # fmt: skip
        rel = table["rel_l2"].to_numpy(float)
        one_minus_cos = 1 - table["cosine"].to_numpy(float)
        ax.plot(x, np.maximum(rel, FLOOR), "o-", ms=3, color=A_COLOR, label="relative L2 error (total)")
        ax.plot(x, np.clip(one_minus_cos, FLOOR, 2), "s-", ms=2.5, color=B_COLOR, lw=1, label="1 - cosine")
        missing = np.isnan(rel)
        if missing.any():
            ax.plot(x[missing], np.full(missing.sum(), 1.0), "x", color=BAD, ms=8, mew=2, label="missing or unmatched")
        if max_rel_l2 is not None:
            ax.axhline(max_rel_l2, color=A_COLOR, ls=":", lw=1, label=f"tolerance rel L2 {max_rel_l2:g}")
        if min_cosine is not None:
            ax.axhline(1 - min_cosine, color=B_COLOR, ls=":", lw=1, label=f"tolerance 1 - cosine {1 - min_cosine:.0e}")
        ax.set_yscale("log")
        top = np.nanmax(np.concatenate([rel, [1.0]]))
        ax.set_ylim(FLOOR / 2, 10 ** math.ceil(math.log10(max(top, 1.0)) + 1))
        ax.set_ylabel("error (log scale)")
        _op_axis(ax, names, first)
        if first in names:
            ax.annotate(label(f"first divergence: {first}"), (names.index(first), ax.get_ylim()[1] / 3), color=BAD, fontsize=9,
                        ha="right" if names.index(first) > len(names) / 2 else "left", xytext=(4, 0),
                        textcoords="offset points")  # fmt: skip
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), fontsize=7.5, ncol=6, frameon=False)
        return _render(fig, "svg")


def statistics(table: pd.DataFrame, first: str | None) -> tuple[str, bytes]:
    """Mean and std of both sides per op: a variance mismatch or a missing normalisation jumps out."""
    names = table["name"].tolist()
    x = np.arange(len(names))
    with plt.rc_context(STYLE):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 5.2), sharex=True, height_ratios=[1, 1])
        top.plot(x, table["std_a"], "o-", ms=3, color=A_COLOR, label="std A (reference)")
        top.plot(x, table["std_b"], "x--", ms=4, color=B_COLOR, label="std B (candidate)")
        top.set_yscale("log")
        top.set_ylabel("std (log)")
        bottom.plot(x, table["mean_a"], "o-", ms=3, color=A_COLOR, label="mean A (reference)")
        bottom.plot(x, table["mean_b"], "x--", ms=4, color=B_COLOR, label="mean B (candidate)")
        bottom.set_yscale("symlog", linthresh=1e-2)
        bottom.set_ylabel("mean (symlog)")
        for ax in (top, bottom):
            ax.legend(loc="upper left", fontsize=7.5, ncol=2)
            _op_axis(ax, names, first)
        return _render(fig, "svg")


def histograms(a: np.ndarray, b: np.ndarray, op: str) -> tuple[str, bytes]:
    """Overlaid value histograms (log counts) over a range both sides share."""
    fa, fb = _sample(a), _sample(b)
    both = np.concatenate([fa[np.isfinite(fa)], fb[np.isfinite(fb)]])
    lo, hi = (np.percentile(both, [0.02, 99.98]) if both.size else (0.0, 1.0))
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    bins = np.linspace(lo, hi, 121)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.2, 3.6))
        ax.hist(np.clip(fa, lo, hi), bins=bins, histtype="stepfilled", alpha=0.35, color=A_COLOR, label="A")
        ax.hist(np.clip(fb, lo, hi), bins=bins, histtype="step", lw=1.4, color=B_COLOR, label="B")
        ax.set_yscale("log")
        ax.set_xlabel(label(f"value of {op} (tails clipped to the shared 0.02-99.98 percentile range)"))
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
        return _render(fig, "svg")


def error_heatmap(err_tc: np.ndarray, op: str, audio_steps: int | None) -> tuple[str, bytes]:
    """|B - A| over time step x channel (log colour), `err_tc` shaped [T, C]."""
    t, c = err_tc.shape
    pool = max(1, math.ceil(t / 1500))  # at most 1500 columns: max-pool so no spike is lost
    if pool > 1:
        err_tc = err_tc[: t // pool * pool].reshape(t // pool, pool, c).max(axis=1)
    finite = err_tc[np.isfinite(err_tc)]
    top = float(finite.max()) if finite.size else 1.0
    norm = LogNorm(vmin=max(top * 1e-6, FLOOR), vmax=max(top, 2 * FLOOR))
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(13, 3.6))
        im = ax.imshow(np.maximum(err_tc.T, norm.vmin), aspect="auto", origin="lower", norm=norm, cmap="magma",
                       interpolation="nearest", extent=(0, t, 0, c))  # fmt: skip
        if audio_steps and audio_steps < t:
            ax.axvline(audio_steps, color="#00e5ff", lw=1, ls="--")
            ax.text(audio_steps, c * 0.97, " audio ends, padding after", color="#00e5ff", va="top", fontsize=8)
        ax.set_xlabel("time step")
        ax.set_ylabel("channel")
        ax.set_title(label(f"|B - A| at {op}"), fontsize=9)
        fig.colorbar(im, ax=ax, pad=0.01, label="absolute error")
        return _render(fig, "png")


def step_error(step_rel_error: np.ndarray, step_cosine: np.ndarray, op: str, audio_steps: int | None) -> tuple[str, bytes]:
    """Relative error and cosine per time step: padding and positional bugs show as a slope or a step."""
    x = np.arange(len(step_rel_error))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(13, 3.0))
        ax.plot(x, np.maximum(step_rel_error, FLOOR), lw=0.8, color=BAD, label="relative error of the time step")
        ax.set_yscale("log")
        ax.set_ylabel("relative error (log)")
        ax.set_xlabel("time step")
        ax2 = ax.twinx()
        ax2.plot(x, step_cosine, lw=0.8, color=A_COLOR, alpha=0.7, label="cosine of the time step")
        ax2.set_ylabel("cosine")
        ax2.grid(False)
        if audio_steps and audio_steps < len(x):
            ax.axvline(audio_steps, color="k", lw=1, ls="--")
            ax.text(audio_steps, ax.get_ylim()[1], " audio ends", va="top", fontsize=8)
        lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=7.5)
        ax.set_title(label(f"error per time step at {op}"), fontsize=9)
        return _render(fig, "svg")


def attention(pa: np.ndarray, pb: np.ndarray, op: str, head: int) -> tuple[str, bytes]:
    """One head's softmax probabilities [T_q, T_k]: A, B and |B - A| side by side."""
    diff = np.abs(pb.astype(np.float64) - pa)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
        vmax = float(max(np.nanmax(pa), np.nanmax(pb), 1e-12))
        norm = LogNorm(vmin=vmax * 1e-5, vmax=vmax)
        for ax, data, title in ((axes[0], pa, "A"), (axes[1], pb, "B")):
            im = ax.imshow(np.maximum(data, norm.vmin), norm=norm, cmap="viridis", interpolation="nearest")
            ax.set_title(label(f"{title}: {op}, head {head}"), fontsize=9)
            ax.set_xlabel("key step")
            ax.set_ylabel("query step")
        fig.colorbar(im, ax=axes[:2], pad=0.01, shrink=0.85, label="probability (log)")
        top = float(np.nanmax(diff)) if np.isfinite(diff).any() else 1.0
        dn = LogNorm(vmin=max(top * 1e-5, FLOOR), vmax=max(top, 2 * FLOOR))
        im = axes[2].imshow(np.maximum(diff, dn.vmin), norm=dn, cmap="magma", interpolation="nearest")
        axes[2].set_title(f"|B - A|, head {head}", fontsize=9)
        axes[2].set_xlabel("key step")
        fig.colorbar(im, ax=axes[2], pad=0.01, shrink=0.85, label="absolute difference")
        return _render(fig, "png")


def _sample(x: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    flat = np.asarray(x).reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step].astype(np.float64)


def patching(ops: list[str], final_rel_l2: list[float], unpatched: float, cause: str | None) -> tuple[str, bytes]:
    """Final error after patching each op (log scale), the unpatched error as a line, the cause marked."""
    x = np.arange(len(ops))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(13, 3.8))
        colours = [BAD if op == cause else A_COLOR for op in ops]
        ax.bar(x, np.maximum(final_rel_l2, FLOOR), color=colours, width=0.7)
        ax.axhline(max(unpatched, FLOOR), color="k", ls="--", lw=1, label=f"unpatched: {unpatched:.3g}")
        ax.set_yscale("log")
        ax.set_ylabel("final rel L2 after the patch")
        ax.set_xticks(x)
        ax.set_xticklabels([label(op) for op in ops], rotation=90, fontsize=7)
        ax.legend(loc="upper right", fontsize=8)
        if cause in ops:
            ax.set_title(label(f"patching {cause} restores the output: the cause"), fontsize=9, color=BAD)
        return _render(fig, "svg")
