"""whisperdiff: find where a Whisper port's numbers first go wrong, why, and whether it matters.

Python API (the CLI is a thin layer over it):

    import whisperdiff as wd
    t = wd.trace("torch")                        # embedded tiny.en on the shipped clip -> traces/...
    t = wd.load_trace("traces/torch-tiny.en-speech")
    c = wd.compare(t, "traces/max-tiny.en-speech")
    r = wd.check(t, "traces/max-tiny.en-speech", wd.load_tolerances("float32"))

The package is in layers; each imports only those below it (README "Architecture"; lint-imports checks it):

    present/      CLI, HTML reports, plots, notebook display, headless Chromium
    gate/         check, golden sets, the pytest helper, the fuzz harness
    experiments/  what re-runs an implementation: patching, cross-feed, calibration, corpus sweeps
    analysis/     compare -> Comparison of typed OpResults: replay, hypotheses by op type, findings
    capture/      trace() and Session; torch / MAX / plugin runners (encoder and decoder), Tracer, mark_all
    mapping/      canonical names for a port's values and weights
    measure/      per-op metrics and tolerances
    store/        the trace format: typed Manifest, atomic writer, verified lazy reader, JSON documents
    inputs/       models, audio + Whisper's frontend, corpora
    names.py      the canonical op names every part speaks

Names are imported lazily, so `import whisperdiff` (and `whisperdiff --help`) stays fast.
"""

import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("whisperdiff")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# public name -> module that defines it
_API = {
    "trace": "whisperdiff.capture.session",
    "Session": "whisperdiff.capture.session",
    "compare": "whisperdiff.analysis.compare",
    "Comparison": "whisperdiff.analysis.compare",
    "check": "whisperdiff.gate.check",
    "CheckResult": "whisperdiff.gate.check",
    "assert_traces_close": "whisperdiff.gate.testing",
    "WhisperdiffError": "whisperdiff.errors",
    "WhisperdiffWarning": "whisperdiff.errors",
    "instrument": "whisperdiff.capture.instrument",
    "mark_all": "whisperdiff.capture.graph_capture",  # (not "capture": that is the subpackage's name)
    "ChosenOnly": "whisperdiff.capture.graph_capture",
    "PickBlock": "whisperdiff.capture.graph_capture",
    "PICK_WEIGHT": "whisperdiff.capture.graph_capture",
    "trace_captured": "whisperdiff.capture.captured_trace",
    "preflight": "whisperdiff.capture.preflight",
    "CapturedTorchRunner": "whisperdiff.capture.torch_capture",
    "patch": "whisperdiff.experiments.patch",
    "bisect": "whisperdiff.experiments.bisect",
    "bisect_port": "whisperdiff.experiments.bisect",
    "automap": "whisperdiff.mapping.automap",
    "Tracer": "whisperdiff.capture.tracer",
    "LoadedModel": "whisperdiff.inputs.models",
    "load_model": "whisperdiff.inputs.models",
    "random_model": "whisperdiff.inputs.models",
    "block_op": "whisperdiff.names",
    "op_names": "whisperdiff.names",
    "op_specs": "whisperdiff.names",
    "select_taps": "whisperdiff.names",
    "write_report": "whisperdiff.present.report",
    "plot": "whisperdiff.present.plots",
    "Trace": "whisperdiff.store.trace",
    "TraceWriter": "whisperdiff.store.trace",
    "list_traces": "whisperdiff.store.trace",
    "load_trace": "whisperdiff.store.trace",
    "Tolerance": "whisperdiff.measure.tolerances",
    "ToleranceSet": "whisperdiff.measure.tolerances",
    "load_tolerances": "whisperdiff.measure.tolerances",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'whisperdiff' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


def _register_notebook_display() -> None:
    """Inside IPython, show a Comparison, CheckResult or Trace as HTML (present/notebook.py); the
    data types themselves carry no rendering code."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None:
        from whisperdiff.present.notebook import register

        register(shell)


_register_notebook_display()
