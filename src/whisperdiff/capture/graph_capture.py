"""Mark all: record every value a MAX graph computes while your own code builds it, unedited.

    import whisperdiff as wd

    with Graph("enc", input_types=[mel_type]) as graph, wd.mark_all(encoder) as cap:   # mark_all() for a function
        out = encoder(graph.inputs[0].tensor)                 # your code, as it is
        graph.output(out, *cap.outputs("canonical", dims))    # your outputs first, then the chosen values
    results = compiled.execute(mel)
    values = cap.named(results[1:])                           # {key: numpy array}

Every op MAX creates goes through one of two methods of `max.graph.Graph` (`_add_op_generated`,
`_add_op_get_op_with_results`); while the block runs both are wrapped, and each tensor result is
recorded with the op that made it, the module path it was made in (`layers.0.attention`, as in the
module's state dict) and your file:line. A value's key is `path:op#n` (the n-th `op` made directly in
that module), or the module path itself for a module's output, so keys stay the same from run to run.
`outputs(select)` picks what becomes graph outputs: "all", "canonical" (every value whose static
shape could be a canonical op of the model, under a known layout) or patterns (`layers.*.mlp.fc1`,
`*` = one dotted segment, the one syntax of whisperdiff's maps). `mapping/automap.py` then decides
which value is which canonical op. When the build raises, what was recorded up to there is kept.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from whisperdiff.capture.captured import Captured, rank, short_path, to_numpy, value_key
from whisperdiff.errors import WhisperdiffError


def module_paths(module, prefix: str = "") -> dict[int, str]:
    """id(submodule) -> its dotted path, for `module` and everything under it."""
    paths = {}
    for name, child in getattr(module, "sublayers", {}).items():
        path = f"{prefix}{name}"
        paths[id(child)] = path
        paths.update(module_paths(child, path + "."))
    return paths


def reset_weights(module) -> None:
    """Let a module's weights enter another graph: a max.graph.Weight keeps (caches) its value in the first
    graph that used it, so a module built once for a check could not be built again for real."""
    for weight in getattr(module, "raw_state_dict", dict)().values():
        weight.__dict__.pop("_mlir_value", None)


def _key(value):
    """What identifies a graph value: its MLIR value (a no-op cast returns a new Python object for the
    same value). None for weights (reading a Weight's value would add it to the graph) and non-tensors."""
    from max.graph import TensorValue
    from max.graph.weight import Weight

    if isinstance(value, TensorValue) and not isinstance(value, Weight):
        return value._mlir_value
    return None


def shape_of(value) -> tuple:
    out = []
    for d in value.shape:
        try:
            out.append(int(d))
        except (TypeError, ValueError):
            out.append(str(d))
    return tuple(out)


def _op_name(op) -> str:
    """rmo.AddOp / mo.LayerNormOp -> "add" / "layer_norm"; a builder function -> its name."""
    name = getattr(op, "__name__", None) or getattr(op, "__qualname__", None) or type(op).__name__
    name = name.rsplit(".", 1)[-1].removesuffix("Op")
    name = "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name)).lstrip("_")
    return name.removeprefix("rmo_").removeprefix("mo_")


_SKIP = None


def _library_dirs() -> tuple[str, ...]:
    """Where frames are not the user's: MAX's internals (not its pipelines: a port), whisperdiff, the stdlib."""
    global _SKIP
    if _SKIP is None:
        import max.graph

        top = os.path.dirname(os.path.dirname(max.graph.__file__))
        _SKIP = tuple(os.path.join(top, d) + os.sep for d in os.listdir(top) if d != "pipelines")
        _SKIP += (os.path.dirname(os.path.dirname(__file__)) + os.sep,)
    return _SKIP


def _is_library(filename: str) -> bool:
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"] + os.sep
    return filename.startswith(_library_dirs()) or (filename.startswith(stdlib) and "site-packages" not in filename)


class ChosenOnly(list):
    """A `select` (keys or patterns) whose graph returns the chosen values alone: the code's own outputs are
    left out, so MAX prunes every op only they need: values of one block make a graph that stops at that
    block. trace_captured refuses to trace such a graph in full, since the port's own output is missing."""


PICK_WEIGHT = "whisperdiff.pick_block"  # the Weight that says which block a PickBlock graph returns


class PickBlock(list):
    """A `select` whose graph serves every bisection step with one compile (bisect_port): `keys` are outputs
    as in a plain list, and for each op inside a block (a group: that op's key in block 0, 1, ...) one more
    output returns the value of the block a run-time Weight names (PICK_WEIGHT, `pick`), through a chain of
    `where(pick == i, value_i, acc)`. The Weight's value is not part of the graph, so a build with another
    `pick` loads from MAX's cache; the caller feeds it at load (bisect_port wraps InferenceSession.load).
    pick=None: the picked outputs are left unnamed (step 1). As a list it holds every key it may return,
    which a capture that cannot pick (a torch module's) records as a plain select."""

    def __init__(self, keys: list[str], groups: list[list[str]], pick: int | None = None):
        super().__init__(dict.fromkeys([*keys, *(k for g in groups for k in g)]))
        self.keys, self.groups, self.pick = list(keys), [list(g) for g in groups], pick
        blocks = {len(g) for g in self.groups}
        if len(blocks) > 1 or (pick is not None and not all(0 <= pick < n for n in blocks)):
            raise WhisperdiffError(f"PickBlock: every group needs one key per block, and pick one of them (got {pick})")


class capture:  # noqa: N801 - used like a function: `with wd.capture(module) as cap`
    """Record every tensor value created while the block runs (see the module docstring).

    module: the max.nn Module whose calls give module paths (None: only file:line).
    select, dims: when given, the chosen values are appended to whatever the code passes to
    `graph.output(...)` (for a build function that calls it itself); `n_outputs` is then its own count."""

    empty_is_error = True

    def __init__(self, module=None, *, select: str | list[str] | None = None, dims=None):
        self.module = module
        self._select, self._dims = select, dims
        self.n_outputs: int | None = None
        self.paths = module_paths(module) if module is not None else {}
        if module is not None:
            self.paths[id(module)] = ""
        self.values: list[Captured] = []
        self._by_id: dict = {}  # MLIR value -> Captured
        self._counts: dict[tuple[str, str], int] = {}
        self._recording = False
        self._saved = None
        self.error: BaseException | None = None  # what the build raised, if it did
        self.calls: list[tuple[str, object, tuple, object]] = []  # (module path, layer, args, outputs)
        self.output_keys: list[str | None] = []  # what the code itself passed to graph.output, by key
        self._inputs_of_graph: dict[int, set] = {}
        self._ids: set = set()  # integer values of the run (token ids fed as graph inputs, and what reads them)
        self._id_graphs: set[int] = set()

    # --- recording --------------------------------------------------------------------------------
    def _where(self) -> tuple[str, str]:
        """(module path of the innermost module call on the stack, the user's file:line)."""
        frame, module, where = sys._getframe(2), None, ""
        while frame is not None:
            owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames[:1] else None
            if module is None and owner is not None and id(owner) in self.paths:
                module = self.paths[id(owner)]
            if not where and not _is_library(frame.f_code.co_filename):
                where = f"{short_path(frame.f_code.co_filename)}:{frame.f_lineno}"
            if module is not None and where:
                break
            frame = frame.f_back
        return module or "", where

    def _weight_inputs(self, graph) -> set:
        """The graph's inputs that are weights fed as inputs (a port that passes weights as graph inputs)."""
        if graph is None:
            return set()
        if id(graph) not in self._inputs_of_graph:
            keys = set()
            try:
                for i, v in enumerate(graph.inputs):
                    t = getattr(v, "tensor", v)
                    if self._is_weight_input(i, t):
                        keys.add(getattr(t, "_mlir_value", None))
            except Exception:  # noqa: BLE001 - a graph whose inputs are not tensors: none is a weight
                keys = set()
            self._inputs_of_graph[id(graph)] = keys - {None}
        return self._inputs_of_graph[id(graph)]

    def _is_weight_input(self, i: int, tensor) -> bool:
        """Inputs after the first: a Whisper encoder takes one activation (the mel), so a graph that takes
        more is being fed its weights."""
        return i > 0

    def _id_inputs(self, graph) -> None:
        """The graph's integer inputs are values of the run (token ids): a lookup by them is no weight."""
        if graph is not None and id(graph) not in self._id_graphs:
            self._id_graphs.add(id(graph))
            try:
                self._ids.update(v.tensor._mlir_value for v in graph.inputs if "int" in str(v.tensor.dtype).lower())
            except Exception:  # noqa: BLE001 - inputs that are not tensors: no ids
                pass

    def _record(self, op, args, kwargs, results, graph=None):
        if not self._recording:
            return
        from max.graph import TensorValue
        from max.graph.weight import Weight

        module, where = self._where()
        name = _op_name(op)
        operands = list(args) + list(kwargs.values())
        operands += [x for a in operands if isinstance(a, list | tuple) for x in a]  # concat([...]) and the like
        self._id_inputs(graph)
        indexed = any(_key(a) is not None and _key(a) in self._ids for a in operands)
        seen = [(a, self._by_id.get(_key(a))) for a in operands]
        reads = list(dict.fromkeys(c.index for _, c in seen if c is not None and not c.weight_only))
        # weights: Weight objects, and values made from weights and constants alone (a transposed filter);
        # float ones with an axis longer than 1 only (a scalar epsilon or scale is no weight of the model)
        fed = self._weight_inputs(graph)
        weights = [shape_of(a) for a, _ in seen if isinstance(a, Weight) or (_key(a) is not None and _key(a) in fed)]
        weights += [c.shape for _, c in seen if c is not None and c.weight_only and c.dtype.startswith(("float", "bf"))]
        weight_rank = max((rank(s) for s in weights), default=0)
        # an activation operand: any tensor that is no weight (a graph input such as the mel is one too)
        others = [
            a
            for a, c in seen
            if isinstance(a, TensorValue)
            and not isinstance(a, Weight)
            and not (c and c.weight_only)
            and _key(a) not in fed
            and str(a.dtype).removeprefix("DType.").startswith(("float", "bf"))  # (not indices or masks)
        ]
        weight_only = not others and not indexed and (name.startswith("constant") or name == "weight" or bool(weights))
        for result in results:
            if not isinstance(result, TensorValue):
                continue
            if indexed and not str(result.dtype).removeprefix("DType.").startswith(("float", "bf")):
                self._ids.add(_key(result))
            c = Captured(
                len(self.values),
                value_key(self._counts, module, name),
                name,
                shape_of(result),
                str(result.dtype).removeprefix("DType."),
                module,
                where,
                from_weight=weight_rank > 0,
                operands=reads,
                weight_rank=weight_rank,
                weight_only=weight_only,
                value=result,
            )
            self.values.append(c)
            self._by_id[_key(result)] = c

    def _failed(self, op, args, kwargs) -> None:
        """Keep (op, operand shapes, module path, file:line) of the op whose creation raised."""
        from max.graph import TensorValue

        if self._recording and getattr(self, "failed", None) is None:
            module, where = self._where()
            shapes = [shape_of(a) for a in list(args) + list(kwargs.values()) if isinstance(a, TensorValue)]
            self.failed = (_op_name(op), shapes, module, where)

    def _layer_hook(self, layer, args, kwargs, outputs):
        path = self.paths.get(id(layer))
        if path is None or not self._recording:
            return None
        self.calls.append((path, layer, tuple(args) + tuple(kwargs.values()), outputs))
        for v in args:
            c = self._by_id.get(_key(v))
            if c is not None:
                c.inputs_of.append(path)
        c = self._by_id.get(_key(outputs))
        if c is not None and path:
            c.outputs_of.append(path)
            if len(c.outputs_of) == 1:  # hooks run innermost first: the innermost module names it
                c.key = path
        return None

    def __enter__(self) -> capture:
        from max.graph import Graph
        from max.nn.layer import add_layer_hook

        generated, with_results = Graph._add_op_generated, Graph._add_op_get_op_with_results
        me = self

        def _add_op_generated(graph, op_type, *args, **kwargs):
            try:
                results = generated(graph, op_type, *args, **kwargs)
            except Exception:
                me._failed(op_type, args, kwargs)
                raise
            me._record(op_type, args, kwargs, results, graph)
            return results

        def _add_op_get_op_with_results(graph, op, *args, **kwargs):
            try:
                results, staged = with_results(graph, op, *args, **kwargs)
            except Exception:
                me._failed(op, args, kwargs)
                raise
            me._record(op, args, kwargs, results, graph)
            return results, staged

        output = Graph.output

        def graph_output(graph, *values):
            return output(graph, *me._graph_outputs(graph, values))

        self._saved = (generated, with_results, output)
        Graph._add_op_generated, Graph._add_op_get_op_with_results = _add_op_generated, _add_op_get_op_with_results
        Graph.output = graph_output
        add_layer_hook(self._layer_hook)
        self._recording = True
        return self

    def _graph_outputs(self, graph, values: tuple) -> tuple:
        """What the graph returns: the code's own outputs, then (with `select`) the chosen values."""
        if self._recording:  # the port's own outputs: always compared (trace_captured)
            self.output_keys = [getattr(self._by_id.get(_key(v)), "key", None) for v in values]
        if self._select is not None and self._recording:
            alone = isinstance(self._select, ChosenOnly)
            self.n_outputs = 0 if alone else len(values)
            if isinstance(self._select, PickBlock):
                values = (*values, *self.outputs(self._select.keys), *self._picked(self._select.groups))
            else:
                values = (*(() if alone else values), *self.outputs(self._select, self._dims))
        self._recording = False  # the graph is finished
        return values

    def __exit__(self, exc_type, exc, tb) -> bool:
        from max.graph import Graph
        from max.nn.layer import layer as layer_module

        self._recording = False
        if self._saved is not None:
            Graph._add_op_generated, Graph._add_op_get_op_with_results, Graph.output = self._saved
            self._saved = None
        if self._layer_hook in layer_module._LAYER_HOOKS:  # remove only ours
            layer_module._LAYER_HOOKS.remove(self._layer_hook)
        if exc is not None and not isinstance(exc, KeyboardInterrupt | WhisperdiffError):
            self.error = exc
            self.error_tb = tb
        if exc is None and not self.values and self.empty_is_error:  # never a silent empty capture
            raise WhisperdiffError(
                "mark_all recorded no MAX op: build the graph (call your module on graph.inputs) inside the "
                "with block; for a torch module, pass the module to trace_captured"
            )
        return False

    # --- choosing outputs -------------------------------------------------------------------------
    def select(self, what: str | list[str] = "canonical", dims=None) -> list[Captured]:
        """The recorded values `what` picks: "all", "canonical" (needs dims) or patterns."""
        floats = [c for c in self.values if c.dtype.startswith(("float", "bfloat")) and not c.op.startswith("constant")]
        if what == "all":
            return floats
        if what == "canonical":
            if dims is None:
                raise WhisperdiffError('select="canonical" needs the model dims (e.g. load_model(...).dims)')
            from whisperdiff.mapping.align import layout_view
            from whisperdiff.names import op_specs

            # (not the optional attention probabilities: n_head x T x T each, and tapping them stops fusion)
            shapes = {tuple(s.shape) for s in op_specs(dims) if s.name != "mel" and not s.optional}
            # a symbolic batch axis is 1 in a trace (one 30 s window); other symbolic axes fit nothing
            runs = [(c, (1, *c.shape[1:]) if c.shape and isinstance(c.shape[0], str) else c.shape) for c in floats]
            return [
                c
                for c, shape in runs
                if all(isinstance(d, int) for d in shape) and any(layout_view(s, shape) for s in shapes)
            ]
        from whisperdiff.mapping.maps import pattern_regex

        patterns = [what] if isinstance(what, str) else list(what)
        regexes = [pattern_regex(p.strip()) for p in patterns for p in p.split(",") if p.strip()]
        chosen = [c for c in floats if any(r.fullmatch(c.key) for r in regexes)]
        if not chosen:
            raise WhisperdiffError(
                f"{what!r} matches no captured value; keys look like {', '.join(c.key for c in floats[:3])}"
            )
        return chosen

    def outputs(self, what: str | list[str] = "canonical", dims=None) -> list:
        """The chosen values as float32 graph outputs, in graph order; remembered for `named`."""

        self.chosen = self.select(what, dims)
        return self._float32(self.chosen)

    def _float32(self, chosen: list[Captured]) -> list:
        """The chosen values as float32 graph values (the casts are ours, not the user's: not recorded)."""
        from max.dtype import DType
        from max.graph import ops

        was, self._recording = self._recording, False
        try:
            return [c.value if c.value.dtype == DType.float32 else ops.cast(c.value, DType.float32) for c in chosen]
        finally:
            self._recording = was

    def _picked(self, groups: list[list[str]]) -> list:
        """One float32 output per group: the value of the block PICK_WEIGHT names (PickBlock). MAX computes
        every block's value anyway; the chain keeps one alive, not all (benchmarks/bisect_select.py)."""
        from max.dtype import DType
        from max.graph import Weight, ops

        by_key = {c.key: c for c in self.values}
        missing = [k for g in groups for k in g if k not in by_key]
        if missing:
            raise WhisperdiffError(f"no captured value has the key {missing[0]!r}: make the map from this port")
        was, self._recording = self._recording, False
        try:
            picked, pick = [], None
            for group in groups:
                values = [by_key[k].value for k in group]
                if len({(shape_of(v), str(v.dtype)) for v in values}) > 1:
                    raise WhisperdiffError(
                        f"{', '.join(group[:2])}... differ in shape or dtype: no block can be picked"
                    )
                if pick is None:  # on the values' device, so the comparison needs no transfer
                    pick = Weight(PICK_WEIGHT, DType.int32, [1], device=values[0].device)
                acc = values[0]
                for i, v in enumerate(values[1:], start=1):
                    acc = ops.where(ops.equal(pick, ops.constant(i, DType.int32, device=v.device)), v, acc)
                picked.append(acc if acc.dtype == DType.float32 else ops.cast(acc, DType.float32))
            return picked
        finally:
            self._recording = was

    def named(self, results) -> dict[str, np.ndarray]:
        """Pair the executed graph's outputs for the chosen values (in order) with their keys (all results
        when `select` was given: the code's own outputs are skipped). A PickBlock's picked outputs follow,
        named by their keys in the picked block (left out when it picks none)."""
        results = list(results)[self.n_outputs or 0 :] if self._select is not None else list(results)
        chosen = getattr(self, "chosen", None)
        groups = self._select.groups if isinstance(self._select, PickBlock) else []
        if chosen is None or len(results) != len(chosen) + len(groups):
            raise WhisperdiffError(
                f"got {len(results)} results for {len(chosen or [])} chosen values; pass the outputs after your own"
            )
        named = {c.key: to_numpy(r) for c, r in zip(chosen, results[: len(chosen)], strict=True)}
        pick = self._select.pick if groups else None
        if pick is not None:
            named.update({g[pick]: to_numpy(r) for g, r in zip(groups, results[len(chosen) :], strict=True)})
        return named

    def table(self) -> list[dict]:
        return [c.describe() for c in self.values]


def mark_all(module=None, *, select: str | list[str] | None = None, dims=None):
    """Record every value a port computes (after Polygraphy's "mark all"): for a MAX module or build
    function, a `capture` used around the graph's build; for a torch.nn.Module, a TorchCapture
    (capture/torch_capture.py) that records while the port runs."""
    from whisperdiff.capture.torch_capture import TorchCapture, is_torch_module

    if is_torch_module(module):
        return TorchCapture(module, select=select, dims=dims)
    return capture(module, select=select, dims=dims)
