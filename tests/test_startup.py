"""Lean start-up (issue 17): each command imports only what it needs. No timings here (benchmarks/speed.py
prints those); what is checked is which heavy modules a real CLI process ends up holding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import whisperdiff as wd
from whisperdiff.names import op_specs

HEAVY = ("torch", "whisper", "matplotlib", "max", "numba")  # numba: compare's one-pass metrics, gigabytes only
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr))\n"
    "sys.argv = ['whisperdiff', *{args!r}]\n"
    "from whisperdiff.present.cli import main\n"
    "main()\n"
)


def heavy_modules(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY, args=list(args))], capture_output=True, text=True, timeout=300
    )
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")]
    assert line, proc.stderr
    return set(filter(None, line[-1].removeprefix("HEAVY=").split(",")))


@pytest.fixture(scope="module")
def synthetic_pair(tmp_path_factory):
    """Two small traces written directly (no model run), B off from A from blocks.1 on."""
    dims = {
        "n_mels": 80,
        "n_audio_ctx": 8,
        "n_audio_state": 16,
        "n_audio_head": 2,
        "n_audio_layer": 2,
        "n_vocab": 10,
        "n_text_ctx": 4,
        "n_text_state": 16,
        "n_text_head": 2,
        "n_text_layer": 1,
    }
    manifest = {
        "impl": "synthetic",
        "device": "cpu",
        "dtype": "float32",
        "taps": "default",
        "injected": [],
        "model": {"id": "synthetic", "source": "synthetic", "dims": dims, "weights_sha256": "0" * 64},
        "input": {"kind": "synthetic", "path": "synthetic", "sha256": "1" * 64, "mel_sha256": "2" * 64},
    }
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    with wd.TraceWriter(root / "a", manifest) as wa, wd.TraceWriter(root / "b", manifest) as wb:
        for spec in (s for s in op_specs(dims) if not s.optional):
            x = rng.standard_normal(spec.shape, dtype=np.float32)
            wa.record(spec.name, x)
            wb.record(spec.name, x + np.float32(0.1) if spec.name.startswith("blocks.1") else x)
    return root / "a", root / "b"


def test_op_specs_from_a_manifests_dims_need_no_whisper():
    """Naming a model's ops is arithmetic on its dims: a plain mapping works, and gives whisper's own shapes."""
    from whisper.model import ModelDimensions

    from whisperdiff.inputs.models import preset_dims

    dims = preset_dims("tiny.en")
    assert op_specs(dims) == op_specs(ModelDimensions(**dims))
    assert op_specs(dims)[-1].shape == (1, 1500, 384)


def test_help_ls_and_show_import_no_torch_whisper_matplotlib_or_max(synthetic_pair):
    assert heavy_modules("--help") == set()
    assert heavy_modules("ls", str(synthetic_pair[0].parent)) == set()
    assert heavy_modules("show", str(synthetic_pair[0])) == set()


def test_compare_without_replay_draws_nothing_and_runs_no_model(synthetic_pair):
    # torch may come in where an op diverges (metrics.rounding_error rounds to bfloat16 with it)
    assert heavy_modules("compare", *map(str, synthetic_pair), "--no-replay") - {"torch"} == set()
