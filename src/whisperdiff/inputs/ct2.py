"""CTranslate2 / faster-whisper Whisper models, read without CTranslate2 and converted in memory
to an openai-whisper state dict.

model.bin (binary version 6) is: u32 version, str spec name, u32 spec revision, u32 count, then per
variable: str name, u8 rank, u32 dims[rank], u8 dtype id, u32 byte count, raw data; then u32 alias
count and (alias, target) string pairs. Strings are u16 length (with the trailing NUL) + bytes.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError

# CTranslate2's DataType enum, in order.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
SUPPORTED_VERSIONS = (5, 6)


class _Reader:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.off, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.off + n > len(self.buf):
            raise WhisperdiffError(
                f"{self.path} is truncated or corrupt (wanted {n} bytes at offset {self.off}, "
                f"file has {len(self.buf)}); re-install or re-convert the model"
            )
        out = self.buf[self.off : self.off + n]
        self.off += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.unpack("<H"))).rstrip(b"\0").decode("utf-8", "replace")


def _map(path: Path) -> memoryview:
    """The file's bytes, memory-mapped read-only: no copy of the whole file (to_whisper copies each tensor out)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


def read_model_bin(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """All variables of a CTranslate2 model.bin, as numpy arrays (bfloat16 widened to float32)."""
    path = Path(path)
    try:
        buf = _map(path)
    except OSError as e:
        raise WhisperdiffError(f"cannot read {path}: {e.strerror}") from None
    r = _Reader(buf, path)
    version = r.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise WhisperdiffError(
            f"{path}: CTranslate2 binary version {version} is not supported "
            f"(whisperdiff reads {SUPPORTED_VERSIONS}); re-convert with a current ct2-transformers-converter"
        )
    spec = r.string()
    r.unpack("<I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.unpack("<I")):
        name = r.string()
        shape = tuple(r.unpack("<I") for _ in range(r.unpack("<B")))
        dtype_id = r.unpack("<B")
        raw = r.take(r.unpack("<I"))
        if dtype_id not in _DTYPES:
            raise WhisperdiffError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        if _DTYPES[dtype_id] == "bfloat16":  # numpy has no bfloat16: widen exactly to float32
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=_DTYPES[dtype_id])
        variables[name] = array.reshape(shape)
    for _ in range(r.unpack("<I")):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    return spec, variables


def _layer_count(variables: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    found = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    return max(found) + 1 if found else 0


def to_whisper(variables: dict[str, np.ndarray], path: Path):
    """Convert CTranslate2 WhisperSpec variables to (ModelDimensions, openai-whisper state dict)."""
    import torch
    from whisper.model import ModelDimensions

    def var(name: str) -> np.ndarray:
        if name not in variables:
            raise WhisperdiffError(f"{path}: variable {name!r} is missing; this is not a complete Whisper model")
        return variables[name]

    n_state = var("encoder/conv1/weight").shape[0]
    dims = ModelDimensions(
        n_mels=var("encoder/conv1/weight").shape[1],
        n_audio_ctx=var("encoder/position_encodings/encodings").shape[0],
        n_audio_state=n_state,
        n_audio_head=int(var("encoder/num_heads")),
        n_audio_layer=_layer_count(variables, "encoder"),
        n_vocab=var("decoder/embeddings/weight").shape[0],
        n_text_ctx=var("decoder/position_encodings/encodings").shape[0],
        n_text_state=var("decoder/embeddings/weight").shape[1],
        n_text_head=int(var("decoder/num_heads")),
        n_text_layer=_layer_count(variables, "decoder"),
    )
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, bias: bool = True):
        sd[f"{dst}.weight"] = var(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = var(f"{src}/bias")

    def layer_norm(dst: str, src: str):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = var(f"{src}/gamma"), var(f"{src}/beta")

    def split(dst_names: list[str], src: str, width: int):
        """A fused projection (q|k|v or k|v) into its parts; Whisper's key projection has no bias."""
        weight, bias = var(f"{src}/weight"), var(f"{src}/bias")
        for j, dst in enumerate(dst_names):
            sd[f"{dst}.weight"] = weight[j * width : (j + 1) * width]
            if not dst.endswith(".key"):
                sd[f"{dst}.bias"] = bias[j * width : (j + 1) * width]

    for side, n_layer, width in (
        ("encoder", dims.n_audio_layer, n_state),
        ("decoder", dims.n_text_layer, dims.n_text_state),
    ):
        for i in range(n_layer):
            dst, src = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            split(
                [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0", width
            )
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            if side == "decoder":
                layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
                linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
                split([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1", width)
                linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
            layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    sd["encoder.positional_embedding"] = var("encoder/position_encodings/encodings")
    layer_norm("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = var("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = var("decoder/position_encodings/encodings")
    layer_norm("decoder.ln", "decoder/layer_norm")
    # Copies: the variables are read-only views of the file buffer, which torch refuses to wrap.
    return dims, {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def load_ct2_dir(path: str | Path):
    """(ModelDimensions, state dict) from a CTranslate2 Whisper directory (model.bin [+ config.json])."""
    path = Path(path)
    model_bin = path / "model.bin" if path.is_dir() else path
    spec, variables = read_model_bin(model_bin)
    if spec != "WhisperSpec":
        raise WhisperdiffError(f"{model_bin} holds a CTranslate2 {spec}, not a Whisper model")
    return to_whisper(variables, model_bin)
