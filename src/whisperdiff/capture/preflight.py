"""Preflight: find a port's build-time mistakes in seconds, before a compile that takes minutes.

    report = preflight(lambda: MyEncoder(config, ...), model)     # constructs, maps weights, builds; no compile
    for line in report.lines(): print(line)                       # one line per mistake, in the port's words

What it checks, each as a general rule for its kind of layer or op:
- construction: a config attribute the module reads that the config does not have (and what it has);
- weights: the module's declared weights against the checkpoint's, by shape (weightmap.propose): names
  no checkpoint uses (an adapter is needed: whisperdiff proposes one), filters or matrices declared in
  another axis order than the checkpoint ships;
- the build, on Whisper's input [1, n_mels, 3000] and on the module's own `input_types()` if it has
  them: a convolution reading the mel's axes the other way round, a broadcast that cannot work (a
  symbolic length against fixed positions, channels-first against [T, C]); any other failure is named
  by the module call, the op and the shapes, in one line, and what was captured up to there is kept;
- what-if: when a Conv1D's filters are declared [k, in, out] while the checkpoint ships [out, in, k],
  the build is tried once more as if the convs took the checkpoint's channels-first layout
  (Conv1D(permute=True)), to name the mistake that fix would meet next.
"""

from __future__ import annotations

import difflib
import linecache
import os
from dataclasses import dataclass, field

import numpy as np

from whisperdiff.capture.graph_capture import capture, reset_weights


@dataclass
class Finding:
    kind: str  # config, weight-names, weight-layout, conv-layout, broadcast, permute, build
    subject: str  # the module path or weight the finding is about
    message: str

    def line(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class PreflightReport:
    findings: list[Finding] = field(default_factory=list)
    module: object = None
    weight_map: object = None
    captures: list = field(default_factory=list)  # one graph_capture.capture per build tried

    def add(self, kind: str, subject: str, message: str) -> None:
        if not any(f.kind == kind and f.subject == subject for f in self.findings):
            self.findings.append(Finding(kind, subject, message))

    @property
    def blocking(self) -> list[Finding]:
        """Findings that stop the build; weight names and layouts do not when the proposed map covers them
        (whisperdiff loads the checkpoint through it)."""
        covered = self.weight_map is not None and not self.weight_map.unmatched_reference
        return [f for f in self.findings if not (covered and f.kind in ("weight-names", "weight-layout"))]

    def lines(self) -> list[str]:
        if not self.findings:
            return ["preflight: no build-time mistakes found"]
        return [f.line() for f in self.findings]


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _shape(value) -> tuple:
    from whisperdiff.capture.graph_capture import shape_of

    return shape_of(value)


def _frame_where(tb, not_of=None) -> tuple[str, str]:
    """(Class.method, file:line) of the innermost frame of a traceback in a method (of another object than not_of)."""
    found = ("", "")
    while tb is not None:
        f = tb.tb_frame
        owner = f.f_locals.get("self", not_of)
        if owner is not not_of and f.f_code.co_filename.find(os.sep + "whisperdiff" + os.sep) < 0:
            found = (
                f"{type(f.f_locals['self']).__name__}.{f.f_code.co_name}",
                f"{os.path.basename(f.f_code.co_filename)}:{tb.tb_lineno}",
            )
        tb = tb.tb_next
    return found


def _raised_at(e: BaseException) -> tuple[str, str]:
    """(Class.method or function, file:line) where e was raised in the user's code."""
    where = _frame_where(e.__traceback__)
    return where if where[0] else _innermost(e)


def _innermost(e: BaseException) -> tuple[str, str]:
    """(function, file:line) of the innermost frame of e's traceback outside whisperdiff."""
    found, tb = ("", ""), e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.find(os.sep + "whisperdiff" + os.sep) < 0:
            found = (code.co_name, f"{os.path.basename(code.co_filename)}:{tb.tb_lineno}")
        tb = tb.tb_next
    return found


def check_construction(factory, report: PreflightReport):
    """Call factory(); a missing attribute becomes a finding. Returns the module or None."""
    try:
        return factory()
    except AttributeError as e:
        obj, attr = getattr(e, "obj", None), getattr(e, "name", None)
        where, line = _frame_where(e.__traceback__, not_of=obj)
        if obj is None or attr is None:
            report.add("build", where, f"{where} ({line}) raised AttributeError: {e}")
            return None
        have = [a for a in dir(obj) if not a.startswith("_")]
        tokens = [t for t in attr.split("_") if len(t) > 1]
        close = [a for a in have if any(t in a.split("_") for t in tokens)] or difflib.get_close_matches(attr, have, 3)
        shown = ", ".join(f"{a}={getattr(obj, a)!r}" for a in close[:3] if not callable(getattr(obj, a, None)))
        report.add(
            "config",
            attr,
            f"{where} ({line}) reads {type(obj).__name__}.{attr}, which this "
            f"{type(obj).__name__} does not have"
            + (f" (it has {shown})" if shown else "")
            + f": set {attr} on the config object, or read the attribute it has",
        )
        return None
    except Exception as e:  # noqa: BLE001 - whatever construction raises is a finding, never a traceback
        where, line = _raised_at(e)
        first = (str(e).splitlines() or [""])[0][:200]
        report.add("build", where, f"constructing it raised {type(e).__name__} at {where} ({line}): {first}")
        return None


_AXES = {3: ["out", "in", "k"], 2: ["out", "in"]}


def check_weights(module, reference: dict[str, np.ndarray], report: PreflightReport):
    """The module's declared weights against the checkpoint's; returns the proposed WeightMap."""
    from whisperdiff.mapping.weightmap import propose

    if hasattr(module, "raw_state_dict"):  # max.nn: declared weights, no values yet
        declared = {k: tuple(int(d) for d in w.shape) for k, w in module.raw_state_dict().items()}
        port = declared
    else:  # torch: the values it holds (matched by value when loaded, else by shape and name)
        port = {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items() if v.is_floating_point()}
        declared = {k: tuple(v.shape) for k, v in port.items()}
    ref = {k: v for k, v in reference.items() if k.startswith("encoder.")}
    wmap = propose(port, ref)
    plain = {k.removeprefix("encoder.") for k in ref} | set(ref)
    foreign = [m for m in wmap.matches if m.port not in plain]
    if foreign:
        m = next((m for m in foreign if "blocks." in m.reference), foreign[0])
        report.add(
            "weight-names",
            "",
            f"{len(foreign) + len([k for k in wmap.unmatched_port if k not in plain])} of "
            f"the module's {len(declared)} weight names are no checkpoint name (the module's {m.port} is the "
            f"checkpoint's {m.reference}), and nothing maps them: whisperdiff proposes a map by shape and name "
            f"({len(wmap.matches)} of {len(ref)} matched) and loads the checkpoint through it",
        )
    groups: dict[tuple, list] = {}
    for m in wmap.matches:
        if m.layout not in ("as is", "reshaped") and m.part is None:
            groups.setdefault((m.layout, len(ref[m.reference].shape)), []).append(m)
    for (layout, ndim), ms in groups.items():
        first = ms[0]
        names = _AXES.get(ndim, [f"a{i}" for i in range(ndim)])
        inv = list(np.argsort(first.perm)) if first.perm else list(range(ndim))
        declared_axes = [names[inv[j]] for j in range(ndim)] if ndim in _AXES else None
        what = ", ".join(m.port for m in ms[:3]) + (f" and {len(ms) - 3} more" if len(ms) > 3 else "")
        hint = " (the weight map does), or use Conv1D(permute=True)" if ndim == 3 else " (the weight map does)"
        report.add(
            "weight-layout",
            layout,
            f"{what} {'is' if len(ms) == 1 else 'are'} declared "
            f"{_dims(declared[first.port])}"
            + (f" ({_dims(declared_axes)})" if declared_axes else "")
            + f" but the checkpoint ships {first.reference} as {_dims(ref[first.reference].shape)}"
            + (f" ({_dims(names)})" if ndim in _AXES else "")
            + f": load {'it' if len(ms) == 1 else 'them'} "
            f"{layout}{hint}",
        )
    for name in wmap.unmatched_reference:
        report.add(
            "weight-names", name, f"no weight of the module fits the checkpoint's {name} {_dims(ref[name].shape)}"
        )
    for name in wmap.unmatched_port:
        report.add("weight-names", name, f"the module's {name} {_dims(declared[name])} fits no checkpoint weight")
    report.weight_map = wmap
    return wmap


def _convs(module):
    from max.nn import Conv1D

    from whisperdiff.capture.graph_capture import module_paths

    paths = module_paths(module)
    out = []

    def walk(m):
        for child in getattr(m, "sublayers", {}).values():
            if isinstance(child, Conv1D):
                out.append((paths[id(child)], child))
            walk(child)

    walk(module)
    return out


def _conv_reads(path, conv, x_shape, dims, report: PreflightReport, quietly: bool):
    """A Conv1D reads [B, T, C] (or [B, C, T] with permute=True): say when the input is the other way."""
    c_in = (
        int(conv.filter.shape[1]) * conv.num_groups if not conv.permute else int(conv.filter.shape[1]) * conv.num_groups
    )
    t_axis, c_axis = (2, 1) if conv.permute else (1, 2)
    if len(x_shape) != 3 or x_shape[c_axis] == c_in:
        return
    if x_shape[t_axis] != c_in and not (isinstance(x_shape[t_axis], str) and "mel" in x_shape[t_axis]):
        return
    mel = dims is not None and (x_shape[1] == dims.n_mels or "mel" in str(x_shape[1]))
    wants = "[B, C, T]" if conv.permute else "[B, T, C]"
    msg = (
        f"{path} reads {_dims(x_shape)} as {x_shape[t_axis]} time steps of {x_shape[c_axis]} channels"
        + (": Whisper's mel is [B, n_mels, T]" if mel else "")
        + f"; this Conv1D wants {wants}"
        + (" (with a symbolic input it builds, and slides over the wrong axis)" if quietly else "")
        + ("; transpose its input, or Conv1D(permute=True)" if not conv.permute else "")
    )
    report.add("conv-layout", path, msg)


def _build_error(cap, exc, dims, report: PreflightReport, path_calls):
    """Name a failed build in one line: the module call, the op, the shapes."""
    failed = getattr(cap, "failed", None)
    text = str(exc).splitlines() or [type(exc).__name__]
    after = text[text.index("Diagnostics:") + 1 :] if "Diagnostics:" in text else []
    diag = next((ln.strip() for ln in after if ln.strip()), text[0])
    if failed is None:
        where, line = _frame_where(exc.__traceback__)
        report.add("build", where, f"{where} ({line}) raised {type(exc).__name__}: {text[0][:200]}")
        return
    op, shapes, module, where = failed
    if op == "conv" and module in path_calls:
        conv, x_shape = path_calls[module]
        before = len(report.findings)
        _conv_reads(module, conv, x_shape, dims, report, quietly=False)
        if len(report.findings) > before:
            return
    if "broadcast" in diag and len(shapes) == 2:
        a, b = shapes
        what = f"the {op} in {module or type(cap.module).__name__} at {where}"
        if len(a) >= 2 and len(b) >= 2 and tuple(a[-2:]) == tuple(b[-2:][::-1]):
            hint = _commented(where, "permute")
            report.add(
                "permute",
                where,
                f"{what} adds {_dims(a)} (channels first, [B, C, T]) to {_dims(b)} ([T, C]): "
                "permute it to [B, T, C] first (Whisper: x.permute(0, 2, 1))" + hint,
            )
            return
        # the axis that fails: aligned from the right, a symbolic size against a fixed one other than 1
        clash = next(
            (
                (x, y)
                for x, y in zip(reversed(a), reversed(b), strict=False)
                if isinstance(x, str) != isinstance(y, str) and 1 not in (x, y)
            ),
            None,
        )
        if clash:
            sym, fixed = (clash[0], clash[1]) if isinstance(clash[0], str) else (clash[1], clash[0])
            report.add(
                "broadcast",
                where,
                f"{what} adds {_dims(a)} to {_dims(b)}: a symbolic length ({sym}) "
                f"cannot broadcast against {fixed} positions; give the graph a "
                f"static input length (Whisper pads every input to 30 s: {2 * dims.n_audio_ctx if dims else 3000} "
                "frames) or rebind that axis",
            )
            return
    report.add(
        "build",
        where,
        f"{module or 'the graph'} at {where}: {op} failed on {', '.join(_dims(s) for s in shapes)}: {diag[:160]}",
    )


def _commented(where: str, word: str) -> str:
    """' (a commented-out `...` sits at file:line)' when the lines just above `where` hold one."""
    path, _, line = where.rpartition(":")
    if not line.isdigit():
        return ""
    import sys

    full = next((p for p in [path] + [os.path.join(d, path) for d in sys.path if d] if os.path.isfile(p)), None)
    if full is None:
        return ""
    for n in range(int(line) - 1, max(int(line) - 12, 0), -1):
        text = linecache.getline(full, n).strip()
        if text.startswith("#") and word in text and "(" in text:
            return f" ({os.path.basename(path)}:{n} has it commented out: `{text.lstrip('# ')}`)"
    return ""


def check_build(module, input_types, dims, report: PreflightReport, label: str = ""):
    """Build the module's graph on these inputs under capture, without compiling; record findings."""
    from max.graph import Graph

    convs = dict(_convs(module))
    calls: dict[str, tuple] = {}
    # Weights not loaded yet keep their short names ("weight", "bias"), which collide in one graph;
    # give them the full names load_state_dict would.
    declared = module.raw_state_dict() if hasattr(module, "raw_state_dict") else {}
    if len({w.name for w in declared.values()}) < len(declared):
        for fqn, weight in declared.items():
            weight.name = fqn
    cap = capture(module)
    original = cap._layer_hook
    # Conv inputs are recorded before the call (a failing conv never reaches the after-call hook).
    from max.nn import Conv1D

    conv_call = Conv1D.__call__

    def recording_call(conv, x, *a, **k):
        path = next((p for p, c in convs.items() if c is conv), None)
        if path is not None:
            calls[path] = (conv, _shape(x))
        return conv_call(conv, x, *a, **k)

    Conv1D.__call__ = recording_call
    try:
        with Graph(f"preflight{label}", input_types=input_types) as graph, cap:
            module(*(v.tensor for v in graph.inputs))
    except Exception as e:  # noqa: BLE001 - a build failure is what preflight reports
        _build_error(cap, e, dims, report, calls)
    finally:
        Conv1D.__call__ = conv_call
        reset_weights(module)
    del original
    for path, (conv, x_shape) in calls.items():
        quietly = cap.error is None or path not in (getattr(cap, "failed", None) or ("", "", "", ""))[2]
        if any(isinstance(d, str) for d in x_shape) or cap.error is None:
            _conv_reads(path, conv, x_shape, dims, report, quietly=quietly)
    report.captures.append(cap)
    return cap


def _as_channels_first(convs):
    """What-if: the convs take the checkpoint's layout (Conv1D(permute=True)); returns an undo function."""
    from max.graph import Weight

    saved = []
    for _, conv in convs:
        f = conv.filter
        k, c_in, c_out = (int(d) for d in f.shape)
        saved.append((conv, conv.permute, f))
        # object.__setattr__: the trial weight must not enter the module's own weight registry
        object.__setattr__(conv, "permute", True)
        object.__setattr__(conv, "filter", Weight(f.name, f.dtype, [c_out, c_in, k], f.device))

    def undo():
        for conv, permute, f in saved:
            f.__dict__.pop("_mlir_value", None)
            object.__setattr__(conv, "permute", permute)
            object.__setattr__(conv, "filter", f)

    return undo


def preflight(factory, model, *, workaround=None, input_types=None) -> PreflightReport:
    """Construct (factory()), check weights against `model`'s checkpoint, build on Whisper's input and on
    the module's own input types; no compile. workaround: called after a failed construction, then retried."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from whisperdiff.inputs.models import LoadedModel, load_model

    model = model if isinstance(model, LoadedModel) else load_model(model)
    dims = model.dims
    report = PreflightReport()
    module = check_construction(factory, report)
    if module is None and workaround is not None:
        workaround()
        module = check_construction(factory, PreflightReport())
    if module is None:
        return report
    report.module = module
    reference = {k: v.float().numpy() for k, v in model.state_dict.items()}
    from whisperdiff.capture.torch_capture import is_torch_module

    if is_torch_module(module):
        return _preflight_torch(module, reference, dims, report)
    if not hasattr(module, "raw_state_dict") or not hasattr(module, "sublayers"):
        report.add(
            "scope",
            type(module).__name__,
            f"{type(module).__name__} is neither a max.nn Module nor a torch Module, so its weights and build "
            "cannot be checked before it runs (nothing was checked); capture it as it runs: mark_all and "
            "trace_captured (docs/ports.md)",
        )
        return report
    wmap = check_weights(module, reference, report)
    try:
        module.load_state_dict(wmap.load(reference), strict=False)  # names the weights; values are the checkpoint's
    except (ValueError, TypeError) as e:
        report.add("weight-names", "load", f"loading the checkpoint through the proposed map failed: {str(e)[:200]}")
    whisper_input = [TensorType(DType.float32, [1, dims.n_mels, 2 * dims.n_audio_ctx], device=DeviceRef.CPU())]
    check_build(module, input_types or whisper_input, dims, report, "_whisper")
    own = list(module.input_types()) if hasattr(module, "input_types") else None
    if own is not None and [str(t) for t in own] != [str(t) for t in whisper_input]:
        check_build(module, own, dims, report, "_own")
    # What-if: filters declared [k, in, out] while the checkpoint ships [out, in, k] -> the channels-first fix.
    convs = [(p, c) for p, c in _convs(module) if not c.permute]
    flagged = any(f.kind == "weight-layout" and "Conv1D" in f.message for f in report.findings)
    if convs and flagged:
        undo = _as_channels_first(convs)
        try:
            trial = PreflightReport()
            check_build(module, whisper_input, dims, trial, "_whatif")
            for f in trial.findings:
                if f.kind in ("permute", "broadcast") and not any(g.kind == f.kind for g in report.findings):
                    report.add(
                        f.kind, f.subject, f.message + " [met once the convs take [B, C, T], Conv1D(permute=True)]"
                    )
        finally:
            undo()
    return report


def _preflight_torch(module, reference: dict, dims, report: PreflightReport) -> PreflightReport:
    """A torch module: its weights against the checkpoint, then one forward on Whisper's input (zeros,
    the checkpoint loaded through the proposed map): what raises becomes a finding with its file:line."""
    import torch

    wmap = check_weights(module, reference, report)
    mel = torch.zeros(1, dims.n_mels, 2 * dims.n_audio_ctx)
    try:
        loaded = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in wmap.load(reference).items()}
        module.load_state_dict(loaded, strict=False)
        with torch.no_grad():
            module.eval()(mel)
    except Exception as e:  # noqa: BLE001 - a failed forward is what preflight reports
        where, line = _raised_at(e)
        first = (str(e).splitlines() or [""])[0][:200]
        report.add(
            "build",
            where,
            f"a forward on Whisper's input {_dims(mel.shape)} raised {type(e).__name__} at {where} ({line}): {first}",
        )
    return report
