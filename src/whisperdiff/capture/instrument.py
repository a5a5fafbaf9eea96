"""Trace a MAX Graph model you wrote yourself, without editing it: every `max.nn` submodule call, and
any value you pick, becomes an extra graph output at build time, under canonical names.

    import whisperdiff as wd

    encoder = MyEncoder(...)                                  # your max.nn.Module, unchanged
    with Graph("enc", input_types=[mel_type]) as graph, \\
         wd.instrument(encoder, names={"convs.0": "conv1", "layers.*.attn": "blocks.*.attn.out"}) as taps:
        out = encoder(graph.inputs[0].tensor)
        graph.output(out, *taps.outputs)                       # your outputs first, then the taps
    ...
    results = model.execute(mel)
    named = taps.named(results[1:])                            # {canonical name: numpy array}

It uses max.nn's own layer hooks (`add_layer_hook`), which see every Module call with its output;
module paths come from walking `sublayers` (`layers.0.attn`, as in the module's state dict).
`names` maps paths to canonical names: a dict of exact paths and/or globs whose `*` stands for one
path segment (`blocks.*.mlp.fc1`), first match wins, or None to keep the paths (then map them at compare time with --rename). Submodule calls
that map to no name are not tapped; `taps.tap(name, value)` adds a value that is no module's
output (an activation function, a residual sum).
"""

from __future__ import annotations

import re

import numpy as np

from whisperdiff.capture.graph_capture import module_paths
from whisperdiff.errors import WhisperdiffError
from whisperdiff.mapping.align import rename


class instrument:  # noqa: N801 - used like a function: `with wd.instrument(module) as taps`
    def __init__(self, module, names: dict[str, str] | None = None, *, include_unnamed: bool = False):
        from whisperdiff.capture.torch_capture import is_torch_module

        if is_torch_module(module):
            raise WhisperdiffError(
                "instrument taps max.nn modules while their graph is built; a torch module is captured as it "
                "runs: wd.mark_all(module) and trace_captured (docs/ports.md)"
            )
        if not hasattr(module, "sublayers"):
            raise WhisperdiffError(
                f"instrument needs a max.nn Module (with submodules to tap); {type(module).__name__} is not one: "
                "capture it with wd.mark_all (docs/ports.md)"
            )
        self.paths = module_paths(module)
        names = names or {}
        self.exact = {k: v for k, v in names.items() if "*" not in k}
        # In module paths `*` is one path segment: "blocks.*" is a block, not everything under it.
        self.rules = [
            (re.compile("^" + "([^.]+)".join(re.escape(p) for p in k.split("*")) + "$"), v)
            for k, v in names.items()
            if "*" in k
        ]
        self.keep_paths = not names or include_unnamed
        self._taps: list[tuple[str, object]] = []

    def canonical(self, path: str) -> str | None:
        if path in self.exact:
            return self.exact[path]
        for regex, target in self.rules:  # (a rule may map a path to the same name: a match, not a miss)
            if regex.match(path):
                return rename(path, [(regex, target)])
        return path if self.keep_paths else None

    def tap(self, name: str, value):
        """Make `value` (a TensorValue) an output named `name`; returns it unchanged."""
        from max.dtype import DType
        from max.graph import ops

        if any(n == name for n, _ in self._taps):
            raise WhisperdiffError(f"{name!r} is tapped twice: two module paths map to it (check `names`)")
        self._taps.append((name, value if value.dtype == DType.float32 else ops.cast(value, DType.float32)))
        return value

    def _hook(self, layer, args, kwargs, outputs):
        from max.graph import TensorValue

        path = self.paths.get(id(layer))
        if path is not None and isinstance(outputs, TensorValue):
            name = self.canonical(path)
            if name is not None:
                self.tap(name, outputs)
        return None  # never changes what the module returns

    def __enter__(self) -> instrument:
        from max.nn.layer import add_layer_hook

        add_layer_hook(self._hook)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from max.nn.layer import layer as layer_module

        if self._hook in layer_module._LAYER_HOOKS:  # remove only ours (clear_hooks would drop others')
            layer_module._LAYER_HOOKS.remove(self._hook)
        if exc is None and not self._taps:
            raise WhisperdiffError(self._nothing())

    def _nothing(self) -> str:
        return (
            f"instrument tapped nothing: no call of the module's {len(self.paths)} submodules matched `names`"
            " (or none ran inside the with block); check the names against the module's paths, or use wd.mark_all"
        )

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self._taps]

    @property
    def outputs(self) -> list:
        if not self._taps:
            raise WhisperdiffError(self._nothing())
        return [v for _, v in self._taps]

    def named(self, results) -> dict[str, np.ndarray]:
        """Pair the executed graph's tap outputs (in order) with their names, as numpy arrays."""
        results = list(results)
        if len(results) != len(self._taps):
            raise WhisperdiffError(
                f"got {len(results)} results for {len(self._taps)} taps; pass the outputs after your own"
            )
        return {
            name: (r.to_numpy() if hasattr(r, "to_numpy") else np.asarray(r))
            for name, r in zip(self.names, results, strict=True)
        }
