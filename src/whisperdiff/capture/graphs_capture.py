"""Mark all across a port that builds, compiles and runs its own MAX graphs: a decoder class with its own KV
cache, one graph for every step or one per kind of step, that names nothing.

    cap = GraphsCapture(weight_shapes)
    with cap:
        port = factory(model, ...)            # builds and compiles wherever it likes: here, or ...
    with cap:
        port.start(features)                  # ... on its first run
    with cap:
        logits = port.step(tokens)            # runs its compiled models as it always does
    values = cap.named()                      # {key: numbers} of what those runs computed

While active it is graph_capture's capture (every op of every graph built, with file:line), and more:
- each graph finished while it is on gets every value it computes as extra outputs, after the port's own;
- a model compiled from such a graph (InferenceSession.load) is known by that graph;
- each execution of such a model returns only the port's own outputs to the port (so its code that
  unpacks them works unchanged), and the extra ones are kept for `named`.
A decoder graph takes activations as inputs besides its first (the encoder output, its KV cache), so a graph
input counts as a weight only where its static shape is one of the checkpoint's (a port that feeds its
weights as inputs).
"""

from __future__ import annotations

import numpy as np

from whisperdiff.capture.captured import to_numpy
from whisperdiff.capture.graph_capture import capture, shape_of


class GraphsCapture(capture):
    """Every value of every MAX graph a port builds and runs while this is active (module docstring)."""

    empty_is_error = False  # a port may build nothing while the factory runs; the caller says when none ran

    def __init__(self, weight_shapes=()):
        super().__init__(None)
        self.weight_shapes = {tuple(s) for s in weight_shapes} | {tuple(reversed(s)) for s in weight_shapes}
        self._graph_of: dict[int, int] = {}  # Captured.index -> id(graph)
        self._graphs: dict[int, tuple] = {}  # id(graph) -> (graph, n own outputs, chosen Captured)
        self._models: dict[int, tuple] = {}  # id(model) -> (model, id(graph))
        self._ran: list[dict[str, np.ndarray]] = []  # the extra outputs of each execution since `named`
        self.runs = 0  # executions of a captured graph so far
        self._patched = None

    def _is_weight_input(self, i: int, tensor) -> bool:
        """A decoder graph takes activations besides its first input: a weight only in a checkpoint shape."""
        shape = shape_of(tensor)
        return all(isinstance(d, int) for d in shape) and shape in self.weight_shapes

    def _record(self, op, args, kwargs, results, graph=None):
        before = len(self.values)
        super()._record(op, args, kwargs, results, graph)
        for c in self.values[before:]:
            self._graph_of[c.index] = id(graph)

    def _graph_outputs(self, graph, values: tuple) -> tuple:
        """The port's own outputs, then every float value this graph computes (none of them weights alone)."""
        if not self._recording:
            return values
        chosen = [c for c in self.select("all") if self._graph_of.get(c.index) == id(graph) and not c.weight_only]
        self._graphs[id(graph)] = (graph, len(values), chosen)
        return (*values, *self._float32(chosen))

    def __enter__(self) -> GraphsCapture:
        from max.engine import InferenceSession, Model

        super().__enter__()
        load, execute = InferenceSession.load, Model.execute
        me = self

        def captured_load(session, model, *args, **kwargs):
            compiled = load(session, model, *args, **kwargs)
            if id(model) in me._graphs:
                me._models[id(compiled)] = (compiled, id(model))
            return compiled

        def captured_execute(model, *args, **kwargs):  # (Model.__call__ calls execute)
            results = execute(model, *args, **kwargs)
            known = me._models.get(id(model))
            if known is None or known[0] is not model:
                return results
            _, n_own, chosen = me._graphs[known[1]]
            results = list(results)
            me._ran.append({c.key: to_numpy(r) for c, r in zip(chosen, results[n_own:], strict=True)})
            me.runs += 1
            return results[:n_own]

        self._patched = (load, execute)
        InferenceSession.load, Model.execute = captured_load, captured_execute
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        from max.engine import InferenceSession, Model

        if self._patched is not None:
            InferenceSession.load, Model.execute = self._patched
            self._patched = None
        return super().__exit__(exc_type, exc, tb)

    def run(self, execute, arg):
        """execute(arg) with the capture on (the torch capture's interface); what it returned."""
        with self:
            return execute(arg)

    def named(self, results=None) -> dict[str, np.ndarray]:
        """{key: numbers} of every execution since the last call (a graph run twice: its last run)."""
        values: dict[str, np.ndarray] = {}
        for ran in self._ran:
            values.update(ran)
        self._ran = []
        return values
