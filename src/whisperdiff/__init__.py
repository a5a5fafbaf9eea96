"""whisperdiff: find where a Whisper encoder port's numbers first go wrong, why, and whether it matters.

Python API (the CLI is a thin layer over it):

    import whisperdiff as wd
    t = wd.trace("torch")                        # embedded tiny.en on the shipped clip -> traces/...
    t = wd.load_trace("traces/torch-tiny.en-speech")
    t.manifest["model"]["weights_sha256"], t.ops[:3], t["ln_post"]   # lazy, memory-mapped
    wd.load_model("random:tiny,n_audio_layer=2")  # dims + openai-whisper state dict

Modules, one concept each: names (canonical op names), models (weights loader), ct2 (CTranslate2
reader), audio (input + Whisper's frontend), runners/ (one per backend), store (trace format),
stats, provenance, metrics, align, replay, diagnose, compare, plots + report (HTML), browser
(headless Chromium, to look at reports), api, cli.
"""

from .api import trace
from .compare import Comparison, compare
from .errors import WhisperdiffError
from .instrument import instrument
from .models import LoadedModel, load_model, random_model
from .names import block_op, op_names, op_specs, select_taps
from .report import write_report
from .store import Trace, TraceWriter, list_traces, load_trace
from .tolerances import Tolerance, ToleranceSet, load_tolerances
from .tracer import Tracer

__all__ = [
    "trace",
    "compare",
    "Comparison",
    "Tolerance",
    "ToleranceSet",
    "load_tolerances",
    "write_report",
    "load_trace",
    "list_traces",
    "Trace",
    "TraceWriter",
    "Tracer",
    "instrument",
    "load_model",
    "random_model",
    "LoadedModel",
    "op_names",
    "op_specs",
    "block_op",
    "select_taps",
    "WhisperdiffError",
]
