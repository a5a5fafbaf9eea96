"""Encoder speed benchmark: MAX untapped vs MAX with default taps vs openai-whisper's torch encoder.

Prints figures; asserts nothing. Every measurement runs in its own child process on the same input
(the shipped clip's log-mel) so that peak memory is per configuration and imports do not leak between
them. Run from the repository root:

    python benchmarks/encoder.py                 # tiny.en (embedded), 10 repeats, cold compile included
    python benchmarks/encoder.py --skip-cold     # without the ~2 min cold compile
    python benchmarks/encoder.py --json          # figures as one JSON object

Goals on the 2-core CPU of the brief: MAX untapped at least as fast as torch eager; default taps
at most 1.15x untapped; a warm `whisperdiff trace --impl max` at most 4 s wall (issue 17; every goal in
one run: benchmarks/speed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def encoder_flops(d) -> float:
    """Multiply-adds x 2 of one 30 s window through the encoder (convs, projections, attention, MLP)."""
    t, c = d.n_audio_ctx, d.n_audio_state
    convs = 2 * 3 * (d.n_mels * c * 2 * t + c * c * t)
    block = 2 * (4 * t * c * c + 2 * t * t * c + 8 * t * c * c)
    return convs + d.n_audio_layer * block


def peak_rss_mb() -> float:
    """This process's peak RSS in MB (VmHWM: its own, not a parent's; analysis/heap.py)."""
    from whisperdiff.analysis.heap import peak_mb

    return peak_mb()


def encoder_pass(config: str, model_spec: str):
    """(model, once, facts): one encoder pass on the shipped clip's log-mel for `config` (torch, max-untapped,
    max-default, max-cold), loaded and ready; `once()` runs it with every output reaching numpy."""
    import numpy as np

    import whisperdiff as wd
    from whisperdiff.inputs.audio import prepare_input

    model = wd.load_model(model_spec)
    mel = prepare_input(model.dims.n_mels).mel
    if config == "torch":
        import torch

        encoder = model.whisper_model("cpu", torch.float32).encoder
        x = torch.from_numpy(mel)

        def once():
            with torch.no_grad():
                encoder(x)

        return model, once, {"threads": torch.get_num_threads()}
    from whisperdiff.capture.max_runner import MaxRunner
    from whisperdiff.names import select_taps

    taps = select_taps(model.dims, "output" if config in ("max-untapped", "max-cold") else "default")
    runner = MaxRunner(model, device="cpu", taps=taps)
    sink = []

    def once():
        sink.clear()
        runner.run(mel, lambda name, array: sink.append(np.asarray(array)))  # outputs reach numpy

    return model, once, {"compile_seconds": runner.compile_seconds, "cache_hit": runner.cache_hit, "taps": len(taps)}


def child(config: str, model_spec: str, repeats: int) -> dict:
    """One measurement in this (fresh) process; returns figures as a dict."""
    model, once, facts = encoder_pass(config, model_spec)
    result = {"config": config, "flops": encoder_flops(model.dims), "model": model.model_id, **facts}
    if config == "max-cold":
        repeats = 1
    once()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    result.update(median_seconds=statistics.median(times), times=times, peak_rss_mb=peak_rss_mb())
    return result


def run_child(config: str, args, env=None) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--model", args.model, "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {config!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sgemm_gflops() -> float:
    """Best float32 matmul throughput of this CPU (torch, all threads): the practical float32 limit."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def trace_wall_seconds(model: str, runs: int = 3) -> list[float]:
    """Wall time of `whisperdiff trace --impl max` from process start to trace on disk (warm cache)."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "whisperdiff.present.cli",
                    "trace",
                    "--impl",
                    "max",
                    "-m",
                    model,
                    "-o",
                    f"{tmp}/t{i}",
                ],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold compile (about 2 min on 2 cores)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.repeats)))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    figures = {}
    with console.status("measuring") as status:
        for config in ("max-untapped", "max-default", "torch"):
            status.update(f"{config}: {args.repeats} runs")
            figures[config] = run_child(config, args)
            if config.startswith("max") and not figures[config]["cache_hit"]:  # first time: now it is cached
                figures[f"{config}-first-compile"] = figures[config]["compile_seconds"]
                figures[config] = run_child(config, args)
        if not args.skip_cold:
            status.update("cold compile in an empty cache (about 2 min)")
            with tempfile.TemporaryDirectory() as home:  # HOME -> empty ~/.cache/modular: a first-ever compile
                figures["max-cold"] = run_child("max-cold", args, env={**os.environ, "HOME": home})
        status.update("warm `whisperdiff trace --impl max`")
        figures["trace_wall_seconds"] = trace_wall_seconds(args.model)
        status.update("float32 matmul limit")
        figures["sgemm_gflops"] = sgemm_gflops()

    untapped, tapped, torch_ = figures["max-untapped"], figures["max-default"], figures["torch"]
    flops = untapped["flops"]
    limit = figures["sgemm_gflops"]
    summary = {
        "model": untapped["model"],
        "encoder_gflop_per_window": flops / 1e9,
        "median_seconds": {k: figures[k]["median_seconds"] for k in ("max-untapped", "max-default", "torch")},
        "torch_over_max_untapped": torch_["median_seconds"] / untapped["median_seconds"],
        "max_default_taps_over_untapped": tapped["median_seconds"] / untapped["median_seconds"],
        "share_of_float32_limit": {
            k: flops / figures[k]["median_seconds"] / 1e9 / limit for k in ("max-untapped", "max-default", "torch")
        },
        "sgemm_gflops": limit,
        "compile_seconds": {
            "warm": untapped["compile_seconds"],
            "cold": figures["max-cold"]["compile_seconds"] if "max-cold" in figures else None,
        },
        "peak_rss_mb": {k: figures[k]["peak_rss_mb"] for k in ("max-untapped", "max-default", "torch")},
        "trace_wall_seconds_median": statistics.median(figures["trace_wall_seconds"]),
        "raw": figures,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return

    table = Table(title=f"Whisper encoder, {summary['model']}, one 30 s window, CPU float32 ({os.cpu_count()} cores)")
    for col in ("", "median s", "GFLOP/s", "share of fp32 limit", "peak RSS MB"):
        table.add_column(col, justify="right")
    for k in ("max-untapped", "max-default", "torch"):
        s = summary["median_seconds"][k]
        table.add_row(
            k,
            f"{s:.3f}",
            f"{flops / s / 1e9:.0f}",
            f"{summary['share_of_float32_limit'][k]:.0%}",
            f"{summary['peak_rss_mb'][k]:.0f}",
        )
    out = Console()
    out.print(table)
    cold = summary["compile_seconds"]["cold"]
    out.print(f"encoder: {flops / 1e9:.1f} GFLOP per window; float32 limit (best 2048^3 sgemm): {limit:.0f} GFLOP/s")
    out.print(f"torch / MAX untapped: {summary['torch_over_max_untapped']:.2f}x  (goal >= 1.0)")
    out.print(f"MAX default taps / untapped: {summary['max_default_taps_over_untapped']:.2f}x  (goal <= 1.15)")
    out.print(
        f"compile: warm (cache hit) {summary['compile_seconds']['warm']:.1f} s; "
        + (f"cold (empty cache) {cold:.1f} s" if cold is not None else "cold skipped")
    )
    out.print(
        f"warm `whisperdiff trace --impl max` wall: median {summary['trace_wall_seconds_median']:.2f} s "
        f"of {[round(t, 2) for t in figures['trace_wall_seconds']]}  (goal <= 4 s)"
    )


if __name__ == "__main__":
    main()
