"""Runs the MAX Graph encoder (max_encoder.py) and records its taps under canonical names."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from whisperdiff.capture.runner import Record
from whisperdiff.errors import WhisperdiffError

DTYPES = ("float32", "float16", "bfloat16")
# Taps past this many bytes are recorded from a streamed run (max_encoder.build_pieces): one graph returns
# all its outputs together, so a large model's default taps (4.5 GB at large-v3) would sit in memory at once.
STREAM_ABOVE_BYTES = 1 << 30
MAX_CACHE = Path.home() / ".cache" / "modular" / ".max_cache"


def _cache_entries() -> int:
    return sum(1 for p in MAX_CACHE.rglob("*") if p.is_file()) if MAX_CACHE.exists() else 0


def resolve_max_device(device: str):
    """(driver device, graph DeviceRef, name) for cpu / gpu / auto."""
    from max.driver import CPU, Accelerator, accelerator_count
    from max.graph import DeviceRef

    device = (device or "auto").lower()
    if device == "auto":
        device = "gpu" if accelerator_count() > 0 else "cpu"
    if device in ("gpu", "cuda"):
        if accelerator_count() == 0:
            raise WhisperdiffError("MAX sees no GPU on this machine; use --device cpu (or auto)")
        return Accelerator(), DeviceRef.GPU(), "gpu"
    if device == "cpu":
        return CPU(), DeviceRef.CPU(), "cpu"
    raise WhisperdiffError(f"unknown device {device!r} for --impl max; use cpu, gpu or auto")


def encoder_weights(model, dtype: str = "float32", names=None) -> dict:
    """The encoder's state dict (or just `names` of it) as the graph's Weights expect it (conv filters
    RSCF: [1, k, in, out]).

    Values are rounded to `dtype` as openai-whisper's `model.to(dtype)` would; layer-norm parameters
    then go back to float32 because the graph's LayerNorm runs in float32 (max_encoder.LayerNorm).
    float32 goes through numpy (torch's threaded `.to` is several times slower on a busy 2-core machine);
    float16/bfloat16 are fed as torch tensors (DLPack): numpy has no bfloat16."""
    import torch

    from whisperdiff.inputs.models import read_each

    def graph_value(name: str, t):
        t = t.detach().cpu()
        if dtype == "float32" and t.dtype in (torch.float16, torch.float32, torch.float64):
            t = t.numpy().astype(np.float32, copy=False)  # float16 -> float32 is exact in numpy as in torch
        else:
            t = t.to(getattr(torch, dtype))
            if name.endswith(("ln.weight", "ln.bias", "ln_post.weight", "ln_post.bias")):
                t = t.float()
        if name in ("encoder.conv1.weight", "encoder.conv2.weight"):
            t = t.transpose(2, 1, 0)[None] if isinstance(t, np.ndarray) else t.permute(2, 1, 0)[None]
        if isinstance(t, np.ndarray):
            return np.ascontiguousarray(t)
        t = t.contiguous()
        return t.numpy() if t.dtype == torch.float32 else t

    # names first: a random model makes each tensor when it is read (read_each: two at a time)
    names = [n for n in (model.state_dict if names is None else names) if n.startswith("encoder.")]
    return read_each(names, lambda name: graph_value(name, model.state_dict[name]))


class MaxRunner:
    """Compiles (or loads from MAX's cache) the encoder graph for these dims and taps, then runs it.

    Clean runs use the clean graph (max_encoder.build_graph); injected bugs and patching use the one
    debug graph, whose outputs are always the default taps (plus any optional ones asked for) so that
    every fault and patch run of a model shares it, whatever taps each asks for.

    Where the taps would pass STREAM_ABOVE_BYTES (or stream=True), the same encoder runs streamed, as
    three graphs (max_encoder.build_pieces): each block's taps are recorded, and freed, before the next
    block runs, and only that block's weights are read for it. Bisection runs streamed too: no graph of the
    whole encoder is compiled, and its second step runs one block again (`retap`, `start_at`)."""

    impl = "max"
    takes_faults = True  # porting bugs are run-time inputs of the debug graph
    patch_points: list[str]

    def __init__(
        self,
        model,
        device: str = "auto",
        dtype: str = "float32",
        taps: list[str] | None = None,
        faults=(),
        patchable: bool = False,
        debug: bool | None = None,
        bisecting: bool = False,
        stream: bool | None = None,
    ):
        """debug: None picks the graph (debug when a fault sets a control or patching is asked); True forces it.
        bisecting: streamed, with every default op as an output of the pieces whatever is recorded, so that
        each bisection step records its taps from the same compiled pieces (`retap`), the second from one
        block (`start_at`). stream: None streams where the taps are large, and a debug graph in half
        precision on CPU (bisecting: always); patching graphs are never streamed."""
        from max import engine
        from max.dtype import DType

        from whisperdiff.capture.max_encoder import Controls, build_graph, build_pieces, patch_points, patch_types
        from whisperdiff.names import op_specs

        if dtype not in DTYPES:
            raise WhisperdiffError(
                f"dtype {dtype!r} is not supported by --impl max yet; use one of {', '.join(DTYPES)}"
            )
        self.loaded, self.dtype = model, dtype
        self.driver_device, graph_device, self.device = resolve_max_device(device)
        if patchable and dtype != "float32" and self.device == "cpu":  # said before a compile that would fail
            raise WhisperdiffError(
                f"MAX 26.7's CPU compiler rejects the patchable encoder graph in {dtype} (its fused epilogues); "
                "patch float32 traces, or run on a GPU (--device gpu)"
            )
        d = model.dims
        specs = [s for s in op_specs(d) if s.name != "mel"]
        self.wanted = [s.name for s in specs if taps is None or s.name in taps]
        self.controls = Controls(d.n_audio_layer, d.n_audio_state, d.n_audio_head)
        for fault in faults:  # porting bugs are run-time inputs of the debug graph
            if fault.controls is not None:
                fault.controls(self.controls)
        self.debug = bool(patchable or not self.controls.is_clean()) if debug is None else debug
        # one debug graph for every fault and patch run; one set of pieces for every bisection step
        shared = self.debug or bisecting
        graph_taps = [s.name for s in specs if s.name in self.wanted or (shared and not s.optional)]
        tap_bytes = sum(4 * int(np.prod(s.shape)) for s in specs if s.name in graph_taps)
        if stream is None:  # streamed where the taps are large, and where MAX 26.7's CPU compiler rejects the
            # whole debug graph: in float16 and bfloat16 (a conv's epilogue fusion fails to type-check)
            stream = tap_bytes > STREAM_ABOVE_BYTES or (self.debug and dtype != "float32" and self.device == "cpu")
        self.stream = not patchable and (bisecting or stream)
        if self.stream:
            pieces = build_pieces(d, graph_taps, getattr(DType, dtype), graph_device, debug=self.debug)
            graphs, self.outputs, self.block_weights = pieces.graphs, pieces.outputs, pieces.block_weights
        else:
            graph, self.outputs = build_graph(d, graph_taps, getattr(DType, dtype), graph_device, debug=self.debug)
        self.start: tuple[int, np.ndarray, str] | None = None  # a streamed run fed one block's input (start_at)
        # Patching inputs, all zero (no patch) until run(patch=...) fills one override and raises one flag.
        self.patch_points = patch_points(d) if patchable else []
        self._patch_inputs = (
            [np.zeros([int(x) for x in t.shape], np.float32) for t in patch_types(d, graph_device)]
            if self.debug
            else []
        )
        before = _cache_entries()
        start = time.perf_counter()
        session = engine.InferenceSession(devices=[self.driver_device])
        if self.stream:  # the block graph takes its weights as inputs; the stem and ln_post hold theirs
            outside = [n for n in model.state_dict if n.startswith("encoder.") and not n.startswith("encoder.blocks.")]
            registry = encoder_weights(model, dtype, outside)
            self.pieces = {
                p: session.load(g, weights_registry=registry if p != "block" else {}) for p, g in graphs.items()
            }
        else:
            self.model = session.load(graph, weights_registry=encoder_weights(model, dtype))
        self.compile_seconds = time.perf_counter() - start
        self.cache_hit = _cache_entries() == before

    def facts(self) -> dict:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "encoder": "whisperdiff.capture.max_encoder (MAX Graph)",
            "graph": "debug" if self.debug else "clean",
            "streamed": self.stream,
            **({"started_at": {"block": self.start[0], "fed": self.start[2]}} if self.start else {}),
            "compile_seconds": round(self.compile_seconds, 3),
            "compile_cache_hit": self.cache_hit,
        }

    def run(self, mel: np.ndarray, record: Record, patch: tuple[str, np.ndarray] | None = None) -> dict:
        """patch: (canonical op, value in canonical layout) to substitute for that op's value (patchable runners)."""
        from max.driver import Buffer

        from whisperdiff.capture.max_encoder import CHANNELS_FIRST_TAPS

        if self.stream:
            return self._run_streamed(np.ascontiguousarray(mel, dtype=np.float32), record)
        controls = [*self.controls.arrays(), *self._patch_inputs] if self.debug else []
        inputs = [np.ascontiguousarray(mel, dtype=np.float32), *controls]
        if patch is not None:
            name, value = patch
            if name not in self.patch_points:
                raise WhisperdiffError(
                    f"the MAX encoder cannot patch {name!r}; patch points: {', '.join(self.patch_points[:6])}, ..."
                )
            value = np.asarray(value, np.float32)
            if name in CHANNELS_FIRST_TAPS:
                value = value.transpose(0, 2, 1)
            flags = np.zeros(len(self.patch_points), np.float32)
            flags[self.patch_points.index(name)] = 1.0
            n = len(inputs) - len(self._patch_inputs)
            overrides = [np.ascontiguousarray(value) if o.shape == value.shape else o for o in self._patch_inputs[1:]]
            inputs = inputs[:n] + [flags, *overrides]
        if self.device != "cpu":
            inputs = [Buffer.from_numpy(a).to(self.driver_device) for a in inputs]
        start = time.perf_counter()
        results = self.model.execute(*inputs)
        if self.device != "cpu":  # execute returns once the GPU has the work: wait for it (docs/gpu.md)
            self.driver_device.synchronize()
        seconds = time.perf_counter() - start
        self._record(self.outputs, results, record)
        return {"encoder_seconds": seconds}

    def _record(self, names: list[str], results, record: Record) -> None:
        """Records the wanted ones of `results` (canonical `names`, one each) in canonical order."""
        from whisperdiff.capture.max_encoder import CHANNELS_FIRST_TAPS

        wanted, got = set(self.wanted), {}
        for name, value in zip(names, results, strict=True):
            if name not in wanted:  # the debug graph computes the default taps whatever was asked
                continue
            array = value.to_numpy()
            if name in CHANNELS_FIRST_TAPS:  # MAX runs the convs time-major; canonical is [B, C, T]
                array = array.transpose(0, 2, 1)
            got[name] = array
        for name in self.wanted:  # in canonical order
            if name in got:
                record(name, got.pop(name))

    def _run_streamed(self, mel: np.ndarray, record: Record) -> dict:
        """The stem, each block with its own weights and switches, then ln_post: one piece's taps at a time.
        After start_at(k, x): block k on x, and no block after the last one whose ops are recorded."""
        from whisperdiff.capture.max_encoder import CONTROL_NAMES, PER_BLOCK_CONTROLS
        from whisperdiff.names import block_input, split_block_op

        per_block = [CONTROL_NAMES.index(n) for n in PER_BLOCK_CONTROLS]
        arrays = self.controls.arrays() if self.debug else []
        n_layer = self.loaded.dims.n_audio_layer

        def controls(k: int) -> list[np.ndarray]:  # the pieces' debug graphs take one block's switches
            return [a[k : k + 1] if i in per_block else a for i, a in enumerate(arrays)]

        start = time.perf_counter()
        if self.start is None:
            first, x = 0, self._execute("stem", [mel, *controls(0)], record)
        else:
            first, fed, _ = self.start
            if block_input(first) in self.wanted:
                record(block_input(first), fed)
            x = fed if self.dtype == "float32" else _torch_dtype(fed, self.dtype)
        post = "ln_post" in self.wanted or self.start is None
        last = n_layer - 1 if post else max((b[0] for b in map(split_block_op, self.wanted) if b), default=-1)
        for k in range(first, last + 1):
            names = [n.replace("encoder.blocks.0.", f"encoder.blocks.{k}.", 1) for n in self.block_weights]
            weights = encoder_weights(self.loaded, self.dtype, names)
            x = self._execute("block", [x, *controls(k), *(weights.pop(n) for n in names)], record, block=k)
        if post:
            self._execute("post", [x, *controls(0)], record)
        return {"encoder_seconds": time.perf_counter() - start}

    def _execute(self, piece: str, inputs: list, record: Record, block: int | None = None):
        """Runs one piece, records its taps in canonical order, and returns its activation for the next."""
        from max.driver import Buffer

        from whisperdiff.names import block_op, split_block_op

        buffers = [a if isinstance(a, Buffer) else Buffer.from_dlpack(a) for a in inputs]
        if self.device != "cpu":
            buffers = [b.to(self.driver_device) for b in buffers]
        x, *results = self.pieces[piece].execute(*buffers)
        names = self.outputs[piece]  # the block graph's are block 0's ops
        if block is not None:
            names = [block_op(block, split_block_op(n)[1]) for n in names]
        self._record(names, results, record)
        return x

    def retap(self, names: list[str]) -> None:
        """Record `names` from now on, from the same compiled graphs (a bisecting runner's pieces output every
        default op); a name no graph outputs is an error."""
        from whisperdiff.names import split_block_op

        def key(name: str) -> str:  # the block graph serves every block: its outputs name block 0's ops
            inside = split_block_op(name) if self.stream else None
            return name if inside is None else f"blocks.*.{inside[1]}"

        outputs = {key(n) for piece in self.outputs.values() for n in piece} if self.stream else set(self.outputs)
        cannot = [n for n in names if key(n) not in outputs]
        if cannot:
            raise WhisperdiffError(f"this MAX graph cannot output {cannot[:4]}; build one with those taps")
        self.wanted = list(names)

    def start_at(self, block: int, x: np.ndarray, source: str) -> None:
        """Runs from now on start at `block`, fed x (its input, canonical [1, T, C]: pos_embed or the block
        before's out, as an earlier run of this encoder recorded it; source says which) instead of the stem's
        and earlier blocks' output. Exact in any dtype: traces hold float32, which holds float16 and bfloat16."""
        if not self.stream or not 0 <= block < self.loaded.dims.n_audio_layer:
            raise WhisperdiffError(
                f"this MAX runner cannot start at block {block}: a streamed runner starts at a block"
            )
        x = np.array(x, dtype=np.float32)  # its own writable copy (a trace's values are read-only maps)
        want = (1, self.loaded.dims.n_audio_ctx, self.loaded.dims.n_audio_state)
        if x.shape != want:
            raise WhisperdiffError(f"block {block}'s input has shape {x.shape}; it takes {want}")
        self.start = (block, x, source)


def _torch_dtype(x: np.ndarray, dtype: str):
    """float32 values as a torch tensor of dtype (numpy has no bfloat16), for a graph input of that dtype."""
    import torch

    return torch.from_numpy(x).to(getattr(torch, dtype))
