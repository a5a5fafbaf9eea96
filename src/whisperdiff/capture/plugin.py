"""Your own implementation as a runner: `whisperdiff trace --impl module.path:factory`,
`--impl path/to/file.py:factory`, or an installed plugin's name (entry point group `whisperdiff.impls`).

The interface, small on purpose:

    def factory(model, device: str, dtype: str):    # model: whisperdiff.LoadedModel (dims, state_dict)
        return MyEncoder(...)

    class MyEncoder:
        def run(self, mel):                          # mel: float32 [1, n_mels, 3000], Whisper's frontend
            yield "conv1", conv1_output              # canonical names (`whisperdiff ops`), canonical layouts
            ...

Ops it does not yield are simply not in the trace (compare lists them as not traced).
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from whisperdiff.capture.runner import Record
from whisperdiff.errors import WhisperdiffError

GROUP = "whisperdiff.impls"


def load_factory(spec: str):
    """The factory named by `module:attr`, `file.py:attr`, or an installed plugin name."""
    if ":" not in spec:
        found = [ep for ep in entry_points(group=GROUP) if ep.name == spec]
        if not found:
            installed = sorted(ep.name for ep in entry_points(group=GROUP))
            raise WhisperdiffError(
                f"unknown implementation {spec!r}; use torch, max, module.path:factory, "
                f"file.py:factory or an installed plugin ({', '.join(installed) or 'none installed'})"
            )
        return found[0].load()
    where, attr = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise WhisperdiffError(f"--impl {spec}: {path} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"whisperdiff_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except WhisperdiffError:
        raise
    except Exception as e:  # the user's module failed to import: say which and why, in one line
        raise WhisperdiffError(f"--impl {spec}: importing {where} failed ({type(e).__name__}: {e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WhisperdiffError(f"--impl {spec}: {where} has no callable {attr!r}")
    return factory


class PluginRunner:
    """Runs a user's encoder through the plugin interface and records what it yields."""

    impl: str
    patch_points: list[str] = []
    takes_faults = False  # faults are run-time switches of the MAX graphs
    records_what_it_yields = True  # no fixed tap list: the trace holds the ops the plugin yields

    def __init__(self, spec: str, model, device: str = "auto", dtype: str = "float32", taps: list[str] | None = None):
        self.impl, self.taps = spec, set(taps) if taps is not None else None
        self.device, self.dtype = ("cpu" if device == "auto" else device), dtype
        factory = load_factory(spec)
        try:
            self.encoder = factory(model, device=self.device, dtype=dtype)
        except Exception as e:
            raise WhisperdiffError(f"--impl {spec}: the factory failed ({type(e).__name__}: {e})") from None
        if not callable(getattr(self.encoder, "run", None)):
            raise WhisperdiffError(f"--impl {spec}: the factory's result has no run(mel) method")

    def facts(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "encoder": f"{self.impl} (plugin)"}

    def run(self, mel: np.ndarray, record: Record, patch=None) -> dict:
        if patch is not None:
            raise WhisperdiffError("plugins cannot be patched (no patch points)")
        start = time.perf_counter()
        seen = set()
        for name, value in self.encoder.run(np.ascontiguousarray(mel, dtype=np.float32)):
            if name in seen:
                raise WhisperdiffError(f"--impl {self.impl} yielded {name!r} twice")
            seen.add(name)
            if self.taps is None or name in self.taps:
                record(name, np.asarray(value))
        return {"encoder_seconds": time.perf_counter() - start}


class PluginDecoderRunner:
    """A user's decoder through the decoder runner interface (runner.py's DecoderRunner):

        def factory(model, device: str, dtype: str):
            return MyDecoder(...)

        class MyDecoder:
            def start(self, features): ...           # encoder output [1, n_audio_ctx, C]: a new sequence
            def step(self, tokens, record=None):     # tokens [1, L] at the next L positions (its KV cache
                ...                                  # or not) -> logits [1, L, n_vocab]; record(op, value)
                return logits                        # for the decoder ops it can name (`ops --decoder`)
            def close(self): ...                     # optional

    Used by trace-decoder, crossfeed and transcribe as `--impl file.py:factory` (or module:factory)."""

    takes_faults = False
    records_what_it_records = True

    def __init__(
        self, spec: str, model, *, taps=None, faults=(), device: str = "cpu", dtype: str = "float32", decoder=None
    ):
        """decoder: the decoder object itself (from a notebook), named `spec`; else the factory `spec` makes it."""
        self.impl, self.device, self.dtype = spec, ("cpu" if device == "auto" else device), dtype
        self.taps = set(taps) if taps is not None else None
        if decoder is None:
            factory = load_factory(spec)
            try:
                decoder = factory(model, device=self.device, dtype=dtype)
            except Exception as e:
                raise WhisperdiffError(f"--impl {spec}: the factory failed ({type(e).__name__}: {e})") from None
        self.decoder = decoder
        missing = [m for m in ("start", "step") if not callable(getattr(self.decoder, m, None))]
        if missing:
            raise WhisperdiffError(
                f"--impl {spec}: the factory's result has no {' or '.join(f'{m}()' for m in missing)}; a decoder "
                "plugin has start(features) and step(tokens, record=None) -> logits (capture/plugin.py)"
            )

    def facts(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "decoder": f"{self.impl} (plugin)"}

    def start(self, features: np.ndarray) -> None:
        self._call("start", np.ascontiguousarray(features, dtype=np.float32))

    def step(self, tokens: np.ndarray, record: Record | None = None) -> np.ndarray:
        said = set()

        def keep(name, value):
            said.add(name)
            if record is not None and (self.taps is None or name in self.taps):
                record(name, np.asarray(value.detach().float().cpu().numpy() if hasattr(value, "detach") else value))

        logits = self._call("step", np.asarray(tokens), keep)
        logits = np.asarray(logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else logits)
        if logits.ndim != 3 or logits.shape[:2] != np.shape(tokens)[:2]:
            raise WhisperdiffError(
                f"--impl {self.impl}: step() returned logits of shape {list(logits.shape)} for tokens of shape "
                f"{list(np.shape(tokens))}; return [1, L, n_vocab]"
            )
        if record is not None and "decoder.logits" not in said:  # what it returns is its logits
            record("decoder.logits", logits.astype(np.float32))
        return logits.astype(np.float32)

    def close(self) -> None:
        if callable(getattr(self.decoder, "close", None)):
            self._call("close")

    def _call(self, method: str, *args):
        try:
            return getattr(self.decoder, method)(*args)
        except WhisperdiffError:
            raise
        except Exception as e:  # the user's code raised: one line that says where
            raise WhisperdiffError(
                f"--impl {self.impl}: its {method}() raised {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            ) from None
