"""Bisection: the first divergent op of B found with small tapped graphs instead of one that taps everything.

A graph that outputs every op compiles slowly (the cost grows with its outputs and with model size), so
B is re-run with only the taps each step needs, on A's recorded input:

1. the stem (conv1 ... pos_embed), every block's output and ln_post;
2. if a block's output is the first to diverge: that block's input and every op inside it.

On MAX no graph of the whole encoder is compiled: B runs streamed (max_encoder.build_pieces), the stem,
one block graph run once per block with that block's weights as inputs, and ln_post, each outputting its
default ops. Step 1 records the block outputs; step 2 runs only the divergent block again, fed B's own
input to it from step 1 (MaxRunner.start_at), and records its inside. Bisection costs one compile of
the pieces (about one whole graph's: MAX's compile time is the distinct kernels a graph needs, and the
pieces need the whole graph's, without the where chains a run-time block pick would add), one streamed
run and one block run. A block holds about a dozen ops at every model size, so a third step inside an op
group would not cut much. The last step's comparison (A's full trace against B's small one, replayed on
B's own inputs as `compare` does) is the finding.

    b = bisect("traces/torch-tiny.en-speech", impl="max", inject=["kv-swap"], out="bisect/kv-swap")
    b.first_divergence, b.comparison.findings[0], [s.seconds for s in b.steps]

Reading A never runs code: B's implementation is the one the caller names, as for `patch`.

A port captured with `mark_all` (docs/ports.md section 0) bisects the same way through `bisect_port`, also
with one compile: the port is built with a PickBlock select (capture/graph_capture.py), whose graph outputs
step 1's values and, for every op inside a block, the value of the block a Weight picks; the values are
named by their keys in a map of an earlier full capture (`trace_captured(..., map_path=...)`: keys are
module paths, so they survive edits). Step 2 builds the port again with the Weight set to the divergent
block: the same graph, loaded from MAX's cache. No step outputs every value:

    b = bisect_port("traces/torch-tiny.en-speech", build, saved=read_map("my-port.map.toml"), out="bisect/p")

where build(select) builds the graph under `wd.mark_all(port, select=select)`, compiles it, and returns
(cap, execute) as `trace_captured` takes them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from whisperdiff.analysis.compare import Comparison, compare
from whisperdiff.capture.captured_trace import trace_captured
from whisperdiff.capture.graph_capture import PICK_WEIGHT, PickBlock
from whisperdiff.capture.session import Session
from whisperdiff.errors import WhisperdiffError, WhisperdiffWarning
from whisperdiff.inputs.audio import EncoderInput
from whisperdiff.inputs.models import LoadedModel, load_model, model_of
from whisperdiff.mapping.maps import expand
from whisperdiff.names import block_input, op_specs, split_block_op
from whisperdiff.store.documents import document
from whisperdiff.store.trace import Trace, load_trace


@dataclass(frozen=True)
class BisectStep:
    taps: list[str]  # the canonical ops this step's graph outputs (mel, the input, always)
    trace: Path
    compile_seconds: float  # loading or compiling B's graph (about 0 where the step reuses the last one)
    run_seconds: float  # tracing B and comparing it with A
    first_divergence: str | None

    @property
    def tap_count(self) -> int:  # the ops recorded besides the input
        return len(self.taps) - 1

    @property
    def seconds(self) -> float:
        return self.compile_seconds + self.run_seconds


@dataclass
class Bisection:
    reference: Path
    impl: str
    steps: list[BisectStep]
    comparison: Comparison  # the last step's: A's full trace against B's smallest

    @property
    def first_divergence(self) -> str | None:
        return self.comparison.first_divergence

    def __bool__(self) -> bool:  # truthy when B agrees with A at every op the steps looked at
        return self.comparison.comparable and self.first_divergence is None

    def to_json(self) -> dict:
        """The document of `bisect --json`: schema whisperdiff.bisect (docs/json.md)."""
        body = {
            "reference": str(self.reference),
            "impl": self.impl,
            "first_divergence": self.first_divergence,
            "steps": [
                {
                    "taps": s.tap_count,
                    "trace": str(s.trace),
                    "compile_seconds": round(s.compile_seconds, 3),
                    "run_seconds": round(s.run_seconds, 3),
                    "first_divergence": s.first_divergence,
                }
                for s in self.steps
            ],
            "comparison": self.comparison.to_json(),
        }
        return document("whisperdiff.bisect", body)


def coarse_taps(dims) -> list[str]:
    """Step 1: the stem, every block's output and the final layer norm."""
    return [s.name for s in op_specs(dims) if (inside := split_block_op(s.name)) is None or inside[1] == "out"]


def block_taps(dims, block: int) -> list[str]:
    """Step 2: the block's input (the previous block's output, or pos_embed) and every default op inside it."""
    inside = [s.name for s in op_specs(dims) if s.name.startswith(f"blocks.{block}.") and not s.optional]
    return ["mel", block_input(block), *inside]


def _reference_and_model(reference, model) -> tuple[Trace, LoadedModel]:
    """A (with its recorded input) and B's weights: the model A names, or the one given if it is A's."""
    a = reference if isinstance(reference, Trace) else load_trace(reference)
    if "mel" not in a.ops:
        raise WhisperdiffError(f"{a.path} did not record its input (op mel); trace the reference with its input")
    if model is None:
        model, reasons = model_of([a.manifest])
        if model is None:
            raise WhisperdiffError(f"no model to run B with ({reasons[-1]}); pass --model")
    elif not isinstance(model, LoadedModel):
        model = load_model(model)
    want = a.manifest.model.weights_sha256
    if want and model.weights_sha256 != want:  # said before any graph is compiled
        raise WhisperdiffError(
            f"{model.model_id} (weights sha256 {model.weights_sha256[:12]}) is not the model {a.path} was traced "
            f"with ({want[:12]}); pass that model with --model"
        )
    return a, model


def _step_comparison(a: Trace, b, model, n: int, replay: bool = True) -> Comparison:
    """A's full trace against one step's small one, as `compare` gives it, saying what the step left out."""
    c = compare(a, b, model=model, replay=replay)
    # B's small trace leaves out A's other ops by design: say that, not "trace B with --taps all".
    c.warnings = [w for w in c.warnings if "were not traced in B" not in w]
    c.warnings.append(f"bisection step {n} traced {len(b.ops) - 1} of A's {len(a.ops) - 1} ops")
    return c


def _bisect_steps(
    a: Trace, model, step: Callable[[list[str], bool], Comparison], steps: list[BisectStep]
) -> Comparison:
    """Step 1 (the stem, every block's output, ln_post); step 2 inside the first block whose output diverges.
    Step 1 only looks for that block (its metrics, no replay: at large-v3 the replay is a minute); the replay
    that names the bug runs on the last step, and on step 1 again only where step 1 is the last."""
    comparison = step(coarse_taps(model.dims), False)
    if not comparison.comparable:  # B ran with other weights or another input: no step can be trusted
        reasons = "; ".join(r.message for r in comparison.comparability.reasons)
        raise WhisperdiffError(f"B (step 1, {steps[0].trace}) is not comparable with {a.path}: {reasons}")
    found = split_block_op(comparison.first_divergence or "")
    if found and found[1] == "out":
        return step(block_taps(model.dims, found[0]), True)
    if comparison.first_divergence is None:
        return comparison  # B agrees: nothing to replay (compare replays only where an op diverges)
    t0 = time.perf_counter()
    comparison = _step_comparison(a, load_trace(steps[0].trace), model, 1)  # the stem or ln_post: named here
    steps[0] = replace(steps[0], run_seconds=steps[0].run_seconds + time.perf_counter() - t0)
    return comparison


def bisect(
    reference: str | Path | Trace,
    *,
    impl: str = "max",
    model=None,
    device: str = "auto",
    dtype: str = "float32",
    inject: list[str] | None = None,
    out: str | Path,
    on_status: Callable[[str], None] | None = None,
) -> Bisection:
    """Find where `impl` (with `inject`ed bugs) first diverges from `reference`, tracing only what each step
    needs. model: B's weights (default: the model A names, found among known models only). out: a folder
    for each step's trace (step1, step2)."""
    a, model = _reference_and_model(reference, model)
    status = on_status or (lambda text: None)
    # B runs on A's own recorded (digest-verified) log-mel: the same input, never a path the manifest names.
    given = EncoderInput(np.array(a["mel"], dtype=np.float32), a.manifest.input.to_json())
    out = Path(out)
    steps: list[BisectStep] = []
    session: Session | None = None

    def step(taps: list[str], replay: bool) -> Comparison:
        nonlocal session
        status(f"step {len(steps) + 1}: {impl} with {len(taps) - 1} taps")
        t0 = time.perf_counter()
        taps_glob = ",".join(taps)
        if session is None or not session.retap(taps_glob):  # MAX: the same pieces serve every step
            status(f"step {len(steps) + 1}: loading or compiling {impl}'s graphs")
            session = Session(
                impl, model=model, device=device, dtype=dtype, taps=taps_glob, inject=inject, bisecting=True
            )
        if steps and hasattr(session.runner, "start_at"):  # MAX: only the block, on B's own input from step 1
            block = split_block_op(taps[-1])[0]
            before = block_input(block)
            fed = load_trace(steps[0].trace)[before]
            session.runner.start_at(block, fed, f"B's own {before}, recorded by step 1 ({steps[0].trace})")
        compiled = time.perf_counter()
        path = out / f"step{len(steps) + 1}"
        b = session.trace(out=path, given_input=given)
        c = _step_comparison(a, b, model, len(steps) + 1, replay)
        ran = time.perf_counter() - compiled
        steps.append(BisectStep(session.tap_names, path, compiled - t0, ran, c.first_divergence))
        return c

    return Bisection(Path(a.path), impl, steps, _bisect_steps(a, model, step, steps))


def bisect_port(
    reference: str | Path | Trace,
    build: Callable[[list[str]], tuple],
    *,
    saved: dict,
    model=None,
    impl: str = "captured port",
    out: str | Path,
    on_status: Callable[[str], None] | None = None,
) -> Bisection:
    """Bisect a port captured with mark_all (module docstring). build(select) -> (cap, execute): the port's graph
    built under wd.mark_all(..., select=select) and compiled; select (a PickBlock) lists the keys of the values
    a step needs. saved: read_map() of a full capture of this port (or of an earlier version of it): its [ops]
    name each canonical op's key. Each step's trace is aligned by that map and runs on the Tracer's default
    input, the shipped clip: A must have been traced on it (a step not comparable with A is an error).

    One graph serves both steps: it outputs step 1's values and, for each op inside a block, the value of the
    block a Weight picks (PickBlock). Step 2 calls build again with that Weight set to the divergent block:
    the same graph, so MAX loads it from its cache instead of compiling it."""
    a, model = _reference_and_model(reference, model)
    status = on_status or (lambda text: None)
    rules = saved.get("ops") if isinstance(saved.get("ops"), dict) else saved
    out = Path(out)
    steps: list[BisectStep] = []
    n_blocks = model.dims.n_audio_layer
    coarse = [t for t in coarse_taps(model.dims) if t != "mel"]
    inner = [split_block_op(t)[1] for t in block_taps(model.dims, 0)[2:] if t not in coarse]  # attn_ln ... mlp.fc2
    keys = _keys(rules, [*coarse, *(f"blocks.{i}.{op}" for op in inner for i in range(n_blocks))])
    step1 = sorted({keys[t] for t in coarse})
    # one group per op inside a block: its key in block 0, 1, ... (ops that share a value share a group)
    groups = list(dict.fromkeys(tuple(keys[f"blocks.{i}.{op}"] for i in range(n_blocks)) for op in inner))

    def step(taps: list[str], replay: bool) -> Comparison:
        n = len(steps) + 1
        ops = [t for t in taps if t != "mel"]
        block = split_block_op(ops[-1])[0] if n > 1 else None
        what = "building and compiling" if n == 1 else "building (the graph of step 1, from MAX's cache)"
        status(f"step {n}: {what} the port with {len(step1)} values and {len(groups)} picked as outputs")
        t0 = time.perf_counter()
        select = PickBlock(step1, groups, block)
        with feeding_pick(select):
            cap, execute = build(select)
        built = time.perf_counter()
        path = out / f"step{n}"
        with warnings.catch_warnings():  # "holds 8 of the model's 30 canonical ops": by design here
            warnings.filterwarnings("ignore", "(?s).*canonical ops; not recorded", WhisperdiffWarning)
            trace_captured(path, cap, execute, model=model, impl=impl, reference=a, saved=saved, ops=ops)
        b = load_trace(path)
        c = _step_comparison(a, b, model, n, replay)
        steps.append(BisectStep(["mel", *ops], path, built - t0, time.perf_counter() - built, c.first_divergence))
        return c

    return Bisection(Path(a.path), impl, steps, _bisect_steps(a, model, step, steps))


def _keys(rules: dict, ops: list[str]) -> dict[str, str]:
    """{canonical op: the port's key for it} from a saved map's rules; every op must be named."""
    keys = {op: right["name"] if isinstance(right, dict) else right for op, right in expand(rules, ops).items()}
    unnamed = [t for t in ops if t not in keys]
    if unnamed:
        raise WhisperdiffError(
            f"the map names no value for {', '.join(unnamed[:4])}: make it from a full capture of the port "
            "(trace_captured(..., map_path=...)) and pass read_map() of it"
        )
    return keys


@contextmanager
def feeding_pick(select: PickBlock):
    """While the port's build runs: every InferenceSession.load of a graph that has PickBlock's Weight is fed
    the block to pick (the user's code loads its graph as it always does)."""
    from max.engine import InferenceSession

    load = InferenceSession.load

    def load_with_pick(self, model, *args, weights_registry=None, **kwargs):
        if _has_weight(model, PICK_WEIGHT):
            pick = np.array([select.pick or 0], np.int32)
            weights_registry = {**(weights_registry or {}), PICK_WEIGHT: pick}
        return load(self, model, *args, weights_registry=weights_registry, **kwargs)

    InferenceSession.load = load_with_pick
    try:
        yield
    finally:
        InferenceSession.load = load


def _has_weight(graph, name: str) -> bool:
    """Whether a max.graph.Graph being loaded declares the Weight `name` (a graph with one block has no pick)."""
    return name in (getattr(graph, "_weights", None) or {})
