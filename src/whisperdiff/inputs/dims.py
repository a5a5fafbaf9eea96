"""Whisper's model dimensions as plain arithmetic, with no torch or whisper import: the published presets,
the sane bounds a dims mapping must keep, and every state-dict entry (with its shape) the dims imply."""

from __future__ import annotations

# openai-whisper's published dims, per model name (for random models and `whisperdiff models`).
_ENC = {
    "tiny": (384, 6, 4),
    "base": (512, 8, 6),
    "small": (768, 12, 12),
    "medium": (1024, 16, 24),
    "large": (1280, 20, 32),
}


def preset_dims(name: str) -> dict:
    """Dims of a published Whisper model by name: tiny..large-v3, *.en, turbo."""
    base = name.removesuffix(".en").split("-")[0]
    if base == "turbo":
        base = "large"
    if base not in _ENC or (name.endswith(".en") and base == "large"):
        raise KeyError(name)
    state, head, layer = _ENC[base]
    v3 = name in ("large-v3", "large-v3-turbo", "turbo")
    return dict(
        n_mels=128 if v3 else 80,
        n_audio_ctx=1500,
        n_audio_state=state,
        n_audio_head=head,
        n_audio_layer=layer,
        n_vocab=51864 if name.endswith(".en") else (51866 if v3 else 51865),
        n_text_ctx=448,
        n_text_state=state,
        n_text_head=head,
        n_text_layer=4 if "turbo" in name else layer,
    )


PRESETS = (
    "tiny",
    "tiny.en",
    "base",
    "base.en",
    "small",
    "small.en",
    "medium",
    "medium.en",
    "large-v1",
    "large-v2",
    "large-v3",
    "large-v3-turbo",
    "turbo",
)


# Sane bounds for model dims from a spec, a checkpoint or a manifest: positive, and small enough
# that a typo (or a hostile file) cannot ask for terabytes. Whisper large is 1280 wide, 32 blocks.
DIM_LIMITS = {
    "n_mels": (80, 128),
    "n_audio_ctx": (1, 1500),
    "n_audio_state": (1, 8192),
    "n_audio_head": (1, 256),
    "n_audio_layer": (1, 128),
    "n_vocab": (1, 1 << 18),
    "n_text_ctx": (1, 4096),
    "n_text_state": (1, 8192),
    "n_text_head": (1, 256),
    "n_text_layer": (1, 128),
}


def dims_problem(dims: dict) -> str | None:
    """What is wrong with a dims dict (missing or unknown keys, non-integers, out of range), or None."""
    if not isinstance(dims, dict):
        return "dims must be a mapping of the ModelDimensions fields"
    missing, extra = sorted(set(DIM_LIMITS) - set(dims)), sorted(set(dims) - set(DIM_LIMITS))
    if missing or extra:
        return f"dims {'lack ' + ', '.join(missing) if missing else 'have unknown ' + ', '.join(map(str, extra))}"
    for key, (low, high) in DIM_LIMITS.items():
        value = dims[key]
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{key}={value!r} is not an integer"
        if key == "n_mels" and value not in (80, 128):
            return f"n_mels={value}: Whisper's frontend makes 80 or 128 mel bins"
        if not low <= value <= high:
            return f"{key}={value} is out of range ({low}..{high})"
    if dims["n_audio_state"] % dims["n_audio_head"] or dims["n_text_state"] % dims["n_text_head"]:
        return "the state width must be a multiple of the head count"
    return None


def expected_shapes(dims) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry openai-whisper's model has for these dims, with its shape.

    Written out from whisper/model.py rather than built on torch's meta device, which costs ~2 s of
    start-up; tests/test_models.py checks it against openai-whisper's own modules."""
    d = dims
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, n_in, n_out, bias=True):
        shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{name}.bias"] = (n_out,)

    def layer_norm(name, n):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (n,)

    def attention(name, n):
        linear(f"{name}.query", n, n)
        linear(f"{name}.key", n, n, bias=False)
        linear(f"{name}.value", n, n)
        linear(f"{name}.out", n, n)

    def block(name, n, cross):
        attention(f"{name}.attn", n)
        layer_norm(f"{name}.attn_ln", n)
        if cross:
            attention(f"{name}.cross_attn", n)
            layer_norm(f"{name}.cross_attn_ln", n)
        linear(f"{name}.mlp.0", n, 4 * n)
        linear(f"{name}.mlp.2", 4 * n, n)
        layer_norm(f"{name}.mlp_ln", n)

    n = d.n_audio_state
    shapes["encoder.positional_embedding"] = (d.n_audio_ctx, n)
    shapes["encoder.conv1.weight"], shapes["encoder.conv1.bias"] = (n, d.n_mels, 3), (n,)
    shapes["encoder.conv2.weight"], shapes["encoder.conv2.bias"] = (n, n, 3), (n,)
    for i in range(d.n_audio_layer):
        block(f"encoder.blocks.{i}", n, cross=False)
    layer_norm("encoder.ln_post", n)
    n = d.n_text_state
    shapes["decoder.token_embedding.weight"] = (d.n_vocab, n)
    shapes["decoder.positional_embedding"] = (d.n_text_ctx, n)
    for i in range(d.n_text_layer):
        block(f"decoder.blocks.{i}", n, cross=True)
    layer_norm("decoder.ln", n)
    return shapes
