"""Mark all for torch: record every value a torch port computes while it runs, unedited.

    import whisperdiff as wd
    from whisperdiff.capture.captured_trace import trace_captured

    cap = wd.mark_all(hf_encoder, dims=model.dims)            # a torch.nn.Module: this capture
    amap = trace_captured("traces/hf-port", cap, lambda mel: hf_encoder(torch.from_numpy(mel)),
                          model=model, impl="transformers WhisperEncoder", reference=reference)

The same path as a MAX port (graph_capture.py): each value becomes a `Captured` with the op that made it,
the module path it was made in (`layers.0.self_attn`, as in the state dict; a module's output is keyed
by the path itself, any other value `path:op#n`) and the port's file:line, and automap decides which
value is which canonical op. A torch function mode sees every top-level torch call (F.linear, F.gelu,
`+`, sdpa...; not what each does inside); global forward hooks give the module paths. Views and
identities (`.contiguous()`, a reshape that shares storage, eval-mode dropout) share their input's
storage and are not separate values. A run that records nothing is an error, never an empty capture.
"""

from __future__ import annotations

import os
import sys
import weakref

import numpy as np

from whisperdiff.capture.captured import Captured, rank, short_path, value_key
from whisperdiff.errors import WhisperdiffError

# Calls that never make a new value: a copy or a re-tag of their input, not an op of the model.
_IDENTITIES = {"contiguous", "clone", "detach", "requires_grad_", "cpu", "cuda"}
_ALIASES = {"iadd": "add", "radd": "add", "isub": "sub", "rsub": "sub", "imul": "mul", "rmul": "mul"}
_ALIASES |= {"itruediv": "div", "truediv": "div", "rtruediv": "div", "rmatmul": "matmul", "conv1d": "conv"}
_ALIASES |= {"conv2d": "conv", "bmm": "matmul", "baddbmm": "matmul", "addmm": "matmul"}


def is_torch_module(obj) -> bool:
    """Is `obj` a torch.nn.Module? (without importing torch)"""
    return any(c.__module__ == "torch.nn.modules.module" and c.__name__ == "Module" for c in type(obj).__mro__)


def _op_name(func) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    name = name.strip("_")
    return _ALIASES.get(name, name)


def _in_place(func) -> bool:
    name = getattr(func, "__name__", "")
    return name.startswith("__i") or name == "__setitem__" or (name.endswith("_") and not name.startswith("_"))


def _tensors(args) -> list:
    import torch

    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _storage(t) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class TorchCapture:
    """Record the values a torch port computes (module docstring). `run(execute, mel)` records one run;
    `values` (Captured, in order), `named()` ({key: array}) and `output(result)` are what trace_captured reads.

    module: the torch.nn.Module whose submodules give paths (None: file:line only, for a function).
    dims: when given, only values shaped like some canonical op keep their numbers (big models)."""

    def __init__(self, module=None, *, select=None, dims=None):
        self.module, self._dims = module, dims
        if select not in (None, "all", "canonical"):
            raise WhisperdiffError('a torch capture takes select="canonical" or "all"; patterns pick nothing yet')
        self.n_outputs = None
        self.error: BaseException | None = None
        self._reset()

    def _reset(self) -> None:
        module = self.module
        self.paths = {id(m): name for name, m in module.named_modules()} if module is not None else {}
        tensors = [*module.parameters(), *module.buffers()] if module is not None else []
        self.weight_storage = {_storage(t) for t in tensors} - {None}  # a weight, or a view of one
        self.values: list[Captured] = []
        self.output_key: str | None = None
        self._arrays: dict[str, object] = {}  # key -> the tensor (numbers read once the run is over)
        # id(tensor) -> (weak reference to it, its Captured): a freed tensor's id may be reused, the weak
        # reference says so; only values worth comparing are held (in _tensor_of), so memory stays small
        self._by_id: dict[int, tuple[weakref.ref, Captured]] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._stack: list[str] = []
        self._replace: dict = {}
        self._patched_keys: list[str] = []
        self._tensor_of: dict[int, object] = {}  # Captured.index -> the tensor that holds its numbers
        self._positions: dict[int, weakref.ref] = {}  # integer tensors this run counted (arange and what follows)
        self._shapes = None
        if self._dims is not None:
            from whisperdiff.names import op_specs

            self._shapes = {tuple(s.shape) for s in op_specs(self._dims) if s.name != "mel" and not s.optional}

    def train_mode(self) -> list[str]:
        """Submodules that would drop values at random in this run: dropout (a Dropout module, or a module with a
        dropout rate that it applies functionally) in a module left in train mode."""
        import torch

        found = []
        for name, m in self.module.named_modules() if self.module is not None else ():
            rate = m.p if isinstance(m, torch.nn.modules.dropout._DropoutNd) else getattr(m, "dropout", 0)
            if m.training and isinstance(rate, int | float) and rate > 0:
                found.append(f"{name or type(m).__name__} (p={rate:g})")
        return found

    # --- recording --------------------------------------------------------------------------------
    def _where(self) -> str:
        import torch

        skip = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.dirname(__file__)) + os.sep)
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if not name.startswith(skip) and not name.startswith("<"):
                return f"{short_path(name)}:{frame.f_lineno}"
            frame = frame.f_back
        return ""

    def _entry(self, t) -> Captured | None:
        """The Captured that tensor `t` holds (or views), if `t` is one this run made."""
        entry = self._by_id.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _counted(self, t) -> bool:
        """Is integer tensor t one the run counted itself (positions), not ids it was given (tokens)?"""
        ref = self._positions.get(id(t))
        return ref is not None and ref() is t

    def _keep_numbers(self, shape: tuple) -> bool:
        if self._shapes is None:
            return True
        from whisperdiff.mapping.align import layout_view

        return any(layout_view(s, shape) is not None for s in self._shapes)

    def _before(self, func, args) -> None:
        """An in-place op (`x += y`, `x.mul_(c)`) is about to overwrite a recorded value: keep a copy of it."""
        if not _in_place(func) or not args:
            return
        known = self._entry(args[0])
        held = self._tensor_of.get(known.index) if known is not None else None
        if held is not None and _storage(held) == _storage(args[0]):  # (through a view too)
            self._tensor_of[known.index] = held.detach().clone()  # the in-place op then records anew

    def _record(self, func, args, kwargs, result) -> None:
        import torch

        results = result if isinstance(result, tuple | list) else (result,)
        name = _op_name(func)
        if name == "setitem" and args:  # x[i] = v: x holds a new value
            results = (args[0],)
        operands = _tensors(list(args) + list((kwargs or {}).values()))
        ints = [t for t in operands if not t.is_floating_point()]
        if name == "arange" or (ints and all(self._counted(t) for t in ints)):  # positions, offsets from them
            for r in results:
                if isinstance(r, torch.Tensor) and not r.is_floating_point():
                    self._positions[id(r)] = weakref.ref(r)
        if name.endswith(("get", "set")):
            return
        if name in _IDENTITIES:  # a copy of its input: the same value, read through
            source = self._entry(operands[0]) if operands else None
            if source is not None and isinstance(result, torch.Tensor) and result is not operands[0]:
                self._by_id[id(result)] = (weakref.ref(result), source)
            return
        module = self._stack[-1] if self._stack else ""
        reads, weights, others, indexed = [], [], 0, False
        for t in operands:
            known = self._entry(t)
            if isinstance(t, torch.nn.Parameter) or _storage(t) in self.weight_storage or (known and known.weight_only):
                if t.is_floating_point():
                    weights.append(tuple(t.shape))
                continue
            if not t.is_floating_point():
                # indices, masks: no activation. A lookup of the ids the port was given (token embedding)
                # is a value of the run, not a weight; a lookup of positions the run counted (arange) is one.
                indexed = indexed or (not t.is_complex() and t.dim() > 0 and not self._counted(t))
                continue
            others += 1  # an activation (or an input of the port, such as the mel)
            if known is not None and known.index not in reads:
                reads.append(known.index)
        weight_rank = max((rank(s) for s in weights), default=0)
        for r in results:
            if not isinstance(r, torch.Tensor) or not r.is_floating_point():
                continue
            if self._entry(r) is not None and not _in_place(func):
                continue
            whole = [t for t in operands if _storage(t) == _storage(r) and t.numel() == r.numel()]
            if whole and not _in_place(func):  # all of an operand's numbers, another layout: the same value
                source = next((self._entry(t) for t in whole if self._entry(t) is not None), None)
                if source is not None:
                    self._by_id[id(r)] = (weakref.ref(r), source)
                continue  # (a slice, a split or a strided view holds part of them: a value of its own)
            c = Captured(
                len(self.values),
                value_key(self._counts, module, name),
                name,
                tuple(r.shape),
                str(r.dtype).removeprefix("torch."),
                module,
                self._where(),
                from_weight=weight_rank > 0,
                operands=reads,
                weight_rank=weight_rank,
                weight_only=bool(weights) and not others and not indexed,
            )
            self.values.append(c)
            self._by_id[id(r)] = (weakref.ref(r), c)
            if c.static and self._keep_numbers(c.shape):
                self._tensor_of[c.index] = r

    def _patched(self, result):
        """The value to hand on: the patch's, when `result` is the value being patched (activation patching)."""
        import torch

        if self._replace and isinstance(result, torch.Tensor):
            known = self._entry(result)
            if known is not None and known.key in self._replace:
                return self._replace_with(known.key, result)
        return result

    def _replace_with(self, key: str, like):
        import torch

        value = torch.as_tensor(self._replace.pop(key), dtype=like.dtype, device=like.device).reshape(like.shape)
        self._patched_keys.append(key)
        return value

    def _pre_hook(self, module, args):
        path = self.paths.get(id(module))
        if path is None:
            return
        self._stack.append(path)
        for t in _tensors(args):
            known = self._entry(t)
            if known is not None and path:
                known.inputs_of.append(path)

    def _post_hook(self, module, args, output):
        path = self.paths.get(id(module))
        if path is None:
            return
        if self._stack and self._stack[-1] == path:
            self._stack.pop()
        first = output if not isinstance(output, tuple | list) else (output[0] if output else None)
        known = self._entry(first)
        if known is not None and path:
            known.outputs_of.append(path)
            if len(known.outputs_of) == 1:  # hooks run innermost first: the innermost module names it
                known.key = path
            if path in self._replace:  # a module's output being patched: the hook's return value replaces it
                value = self._replace_with(path, first)
                return value if not isinstance(output, tuple | list) else type(output)((value, *output[1:]))
        return None

    def _start(self) -> None:
        import torch
        from torch.overrides import TorchFunctionMode

        me = self

        class Recorder(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                me._before(func, args)
                result = func(*args, **(kwargs or {}))
                me._record(func, args, kwargs, result)
                if _in_place(func) and args:  # x[i] = v, x += y: the new value lives in x itself
                    replaced = me._patched(args[0])
                    if replaced is not args[0]:
                        args[0].copy_(replaced)
                    return result
                return me._patched(result)

        self._reset()
        self._hooks = (
            torch.nn.modules.module.register_module_forward_pre_hook(self._pre_hook),
            torch.nn.modules.module.register_module_forward_hook(self._post_hook),
        )
        self._mode = Recorder()
        self._mode.__enter__()

    def _stop(self) -> None:
        self._mode.__exit__(None, None, None)
        for hook in self._hooks:
            hook.remove()

    def _check_recorded(self) -> None:
        if not self.values:
            raise WhisperdiffError(
                "the torch capture recorded no value: no torch op ran on a floating-point tensor inside it "
                "(is this a torch port? for a MAX graph, mark_all the build instead)"
            )

    def run(self, execute, mel, replace: dict | None = None):
        """Run execute(mel) (the port's forward) with recording on; returns what it returned.
        replace: {captured key: array in the port's layout} handed on in place of those values (patching)."""
        import torch

        self._start()
        self._replace, self._patched_keys = dict(replace or {}), []
        try:
            with torch.no_grad():
                result = execute(mel)
        finally:
            self._stop()
        self._check_recorded()
        self._output = self._first_tensor(result)
        known = self._entry(self._output)
        self.output_key = known.key if known is not None else None
        return result

    def __enter__(self) -> TorchCapture:
        """`with wd.mark_all(module) as cap: module(x)` records that run (trace_captured runs it again on
        the trace's own input)."""
        self._start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop()
        if exc is None:
            self._check_recorded()
        return False

    @staticmethod
    def _first_tensor(result):
        import torch

        for x in (getattr(result, "last_hidden_state", None), result):
            if isinstance(x, torch.Tensor):
                return x
        if isinstance(result, dict):
            result = list(result.values())
        if isinstance(result, tuple | list):
            for x in result:
                if isinstance(x, torch.Tensor):
                    return x
        raise WhisperdiffError(f"the port returned {type(result).__name__}, not a tensor: return the encoder output")

    def output(self, result=None) -> np.ndarray:
        """The port's own output (the first tensor it returned) as float32 numbers."""
        out = self._output if result is None else self._first_tensor(result)
        return out.detach().float().cpu().numpy()

    def named(self) -> dict[str, np.ndarray]:
        """{key: numbers} of every recorded value worth comparing (float32)."""
        values = {}
        for c in self.values:
            if c.index in self._tensor_of:
                values[c.key] = self._tensor_of[c.index].detach().float().cpu().numpy()
        return values

    def table(self) -> list[dict]:
        return [c.describe() for c in self.values]


def to_port_layout(value: np.ndarray, view, port_shape: tuple) -> np.ndarray:
    """Invert a canonical view (mapping/align.layout_view's function): the canonical `value` laid out as
    the port holds it. Any permutation or reshape view inverts the same way: view the port's flat indices."""
    index = np.asarray(view(np.arange(int(np.prod(port_shape))).reshape(port_shape)))
    out = np.empty(int(np.prod(port_shape)), np.float32)
    out[index.ravel()] = np.asarray(value, np.float32).ravel()
    return out.reshape(port_shape)


class CapturedTorchRunner:
    """A captured torch port as an encoder runner (runner.py's interface), so experiments/patch.py can
    re-run it with one canonical op's value replaced by the reference's: activation patching for a port
    whisperdiff did not write. Built from what trace_captured used and returned:

        runner = CapturedTorchRunner(cap, lambda mel: port(torch.from_numpy(mel)), amap)
        wd.patch(reference, "traces/my-port", runner=runner).cause
    """

    takes_faults = False

    def __init__(self, cap: TorchCapture, execute, amap, impl: str = "captured torch port"):
        self.cap, self.execute, self.amap, self.impl = cap, execute, amap, impl
        # the port's output is what patching measures; every other aligned op can be patched
        self.patch_points = [m.name for m in amap.matches if m.basis != "output"]

    def facts(self) -> dict:
        return {"device": "cpu", "dtype": "float32", "encoder": f"{self.impl} (captured, re-run for patching)"}

    def run(self, mel: np.ndarray, record, patch=None) -> dict:
        replace = None
        if patch is not None:
            op, value = patch
            m = self.amap.by_name.get(op)
            if m is None or op not in self.patch_points:
                raise WhisperdiffError(f"{op} cannot be patched in this port: no captured value is aligned to it")
            replace = {m.key: to_port_layout(value, self.amap.views[op], m.shape)}
        result = self.cap.run(self.execute, np.ascontiguousarray(mel, np.float32), replace=replace)
        if replace and self.cap._replace:  # the value was never computed in this run: patching did nothing
            raise WhisperdiffError(f"patching {patch[0]}: the port never computed {next(iter(replace))} in this run")
        out = self.cap.output(result)
        record("ln_post", np.ascontiguousarray(self.amap.views["ln_post"](out)))
        return {}
