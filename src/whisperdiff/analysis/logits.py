"""Decoder traces: where along the token positions two traces part, what the logits say, and which
decoder bug fits. Pure functions of arrays (read one op at a time: memory is bounded by the largest op).

    first_position(a, b, layout, tol)   the first token position whose values break the tolerance
    logit_measures(a, b)                KL(A || B) per position, top-1 agreement, the first position where
                                        the argmax changes (both tokens and both probabilities)
    decoder_findings(...)               tests of the decoder's structure at the first divergent op:
                                        positions, causal mask, KV cache, cross-attention layer, skipped norm
"""

from __future__ import annotations

import math

import numpy as np

from whisperdiff.analysis.comparability import comparability
from whisperdiff.analysis.diagnose import Finding
from whisperdiff.names import DECODER_INPUT, decoder_block_op, decoder_op_specs, is_decoder_op, position_axis


def is_decoder_trace(manifest: dict) -> bool:
    return manifest.get("part") == "decoder"


def decoder_layouts(manifest: dict) -> dict[str, str]:
    """Canonical layouts of a decoder trace's ops (for the per-position profiles of compare)."""
    dims = manifest.get("model", {}).get("dims")
    tokens = manifest.get("decoder", {}).get("tokens") or [0]
    if not is_decoder_trace(manifest) or not dims:
        return {}
    try:
        return {s.name: s.layout for s in decoder_op_specs(dict(dims), len(tokens))}
    except (TypeError, KeyError):
        return {}


def position_errors(a, b, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(relative L2 error, cosine) of B against A at each index of `axis`, in float64, one index at a time."""
    n = a.shape[axis]
    rel, cos = np.zeros(n), np.ones(n)
    for p in range(n):
        x = np.asarray(np.take(a, p, axis=axis), np.float64).ravel()
        y = np.asarray(np.take(b, p, axis=axis), np.float64).ravel()
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite B (a -inf logit): rel inf, cosine NaN
            na, nb, nd = np.linalg.norm(x), np.linalg.norm(y), np.linalg.norm(y - x)
            rel[p] = nd / na if na > 0 else (0.0 if nd == 0 else math.inf)
            cos[p] = 1.0 if na == nb == 0 else (0.0 if na == 0 or nb == 0 else float(x @ y / (na * nb)))
    return rel, cos


def first_position(a, b, layout: str | None, tol) -> int | None:
    """The first index along the op's position axis (P; the audio frame for cross-attention K/V) where
    relative error or cosine break `tol`; None when none does."""
    axis = position_axis(layout)
    if axis is None:
        axis = 1 if np.ndim(a) >= 2 else 0
    rel, cos = position_errors(a, b, axis)
    bad = np.zeros(len(rel), bool)
    if tol.max_rel_l2 is not None:
        bad |= ~(rel <= tol.max_rel_l2)
    if tol.min_cosine is not None:
        bad |= ~(cos >= tol.min_cosine)
    return int(np.argmax(bad)) if bad.any() else None


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def logit_measures(a, b, tokens: list[int] | None = None) -> dict:
    """A's and B's logits [1, P, V]: KL(A || B) per position, top-1 agreement and the first argmax change.

    tokens: the teacher-forced sequence (position p predicts tokens[p + 1]), reported beside the change."""
    a, b = np.asarray(a)[0], np.asarray(b)[0]
    kl, agree, change = [], [], None
    for p in range(a.shape[0]):
        pa, pb = _softmax(a[p]), _softmax(b[p])
        kl.append(float(np.sum(pa * (np.log(np.maximum(pa, 1e-300)) - np.log(np.maximum(pb, 1e-300))))))
        ta, tb = int(pa.argmax()), int(pb.argmax())
        agree.append(ta == tb)
        if ta != tb and change is None:
            change = {
                "position": p,
                "a_token": ta,
                "b_token": tb,
                "a_prob": float(pa[ta]),
                "b_prob": float(pb[tb]),
                "a_prob_of_b_token": float(pa[tb]),
                "b_prob_of_a_token": float(pb[ta]),
                "forced_next": tokens[p + 1] if tokens and p + 1 < len(tokens) else None,
            }
    return {
        "kl": kl,
        "max_kl": max(kl, default=0.0),
        "mean_kl": float(np.mean(kl)) if kl else 0.0,
        "top1_agreement": float(np.mean(agree)) if agree else 1.0,
        "first_argmax_change": change,
    }


def decoder_findings(
    op: str, position: int | None, a_trace, b_trace, view=lambda x: x, weights=None, explained=frozenset()
) -> list[Finding]:
    """Name the decoder bug at the first divergent (op, position), from tests on both traces' values.

    Each test is a general property of its op type: a positional embedding matched to the position
    it came from; which keys an attention row gives weight to; another block's value for a per-block
    op; an op whose output equals its input."""
    weights = weights or {}
    if op == DECODER_INPUT and "encoder.ln_post.weight" in weights:  # the decoder's input, from the encoder
        f = _decoder_input(np.asarray(a_trace[op]), view(np.asarray(b_trace[op])), weights)
        return [f] if f is not None else []
    if not is_decoder_op(op) or position is None:
        return []
    a, b = np.asarray(a_trace[op]), view(np.asarray(b_trace[op]))
    embedding = weights.get("decoder.token_embedding.weight")
    where = f"{op} at position {position}"
    if op == "decoder.pos_embed" and "decoder.tok_embed" in a_trace and "decoder.tok_embed" in b_trace:
        pa = a[0] - np.asarray(a_trace["decoder.tok_embed"])[0]  # A's positional rows, position by position
        pb = b[0] - view(np.asarray(b_trace["decoder.tok_embed"]))[0]
        used = int(np.argmin(np.linalg.norm(pa - pb[position], axis=-1)))
        if np.linalg.norm(pa[used] - pb[position]) <= 1e-3 * max(np.linalg.norm(pa[used]), 1e-12) and used != position:
            later = [int(np.argmin(np.linalg.norm(pa - row, axis=-1))) for row in pb[position:]]
            return [
                Finding(
                    "positional",
                    op,
                    0.95,
                    f"{where}: B adds the positional embedding of position {used}, not "
                    f"{position} (positions from {position} on use {later[:6]}): positions restart or are offset "
                    "at each decoding step (the KV cache length not added)",
                )
            ]
    if op == "decoder.tok_embed" and embedding is not None:
        f = _token_row(op, position, b[0][position], embedding, a_trace.manifest)
        if f is not None:
            return [f]
    if op.endswith(".attn.weights") and ".cross_attn." not in op and op not in explained:
        # only when no replayed hypothesis named it: the pattern says which keys, not why
        ra, rb = a[0][:, position], b[0][:, position]  # [H, keys]
        extra, missing = (rb > 1e-6) & (ra <= 1e-12), (ra > 1e-6) & (rb <= 1e-12)
        prompt = (b_trace.manifest.get("decoder") or {}).get("prompt_length") or 0
        if extra[:, position + 1 :].any():
            keys = sorted({int(k) for k in np.nonzero(extra.any(0))[0]})
            prompt_rows_ok = prompt > 0 and not (b[0][:, :prompt] > 1e-6)[..., prompt:].any()
            if position >= prompt and prompt_rows_ok:
                return [
                    Finding(
                        "kv_cache",
                        op,
                        0.7,
                        f"{where}: B's one-token steps give weight to later cache slots {keys[:6]}, which hold no key "
                        f"of this sequence yet, while the prompt rows (0..{prompt - 1}) are masked right: the cache's "
                        "valid length is stale (entries left from a previous run are read)",
                    )
                ]
            return [
                Finding(
                    "causal_mask",
                    op,
                    0.7,
                    f"{where}: B gives weight to later positions {keys[:6]}; the causal mask lets this position see "
                    "later ones (no replayed mask reproduced the values)",
                )
            ]
        if missing.any():
            keys = sorted({int(k) for k in np.nonzero(missing.any(0))[0]})
            return [
                Finding(
                    "kv_cache",
                    op,
                    0.6,
                    f"{where}: B gives no weight to earlier position(s) {keys[:6]} that A attends to: those "
                    "entries are not read at this step (no replayed cache layout reproduced the values)",
                )
            ]
    block = _block_of(op)
    if block is not None:
        part = op.split(".", 3)[3]
        for j in range(_n_blocks(a_trace)):
            other = decoder_block_op(j, part)
            if j == block or other not in a_trace:
                continue
            ao = np.asarray(a_trace[other])
            if ao.shape == b.shape and _rel(ao, b) < 1e-3:
                return [
                    Finding(
                        "wrong_weight",
                        op,
                        0.95,
                        f"{where}: B's {part} in block {block} equals A's in block {j} "
                        f"(rel. error {_rel(ao, b):.1e}): block {block} uses block {j}'s weights",
                    )
                ]
    inputs = {"decoder.ln": _last_block_out(a_trace)}
    source = inputs.get(op)
    if source is not None and source in a_trace and _rel(np.asarray(a_trace[source]), b) < 1e-3:
        return [
            Finding(
                "missing_op", op, 0.95, f"{where}: B's {op} equals its input {source}: the final layer norm is skipped"
            )
        ]
    return []


def _token_row(op, position, row, embedding, manifest) -> Finding | None:
    """The token whose embedding row B used at `position`, when it is another token than the one fed."""
    emb = np.asarray(embedding, np.float32)
    dist = np.linalg.norm(emb - np.asarray(row, np.float32)[None], axis=-1)
    near = np.nonzero(dist <= 1e-4 * max(float(np.linalg.norm(row)), 1e-12))[0]
    tokens = (manifest.get("decoder") or {}).get("tokens") or []
    fed = tokens[position] if position < len(tokens) else None
    if fed is None or not len(near) or fed in near:
        return None
    eot = 50256 if emb.shape[0] < 51865 else 50257  # special tokens first: the usual wrong row is one of them
    used = sorted((int(t) for t in near), key=lambda t: (t < eot, t))
    names = {t: token_text(manifest, t) for t in (*used[:3], fed)}
    which = " or ".join(f"token {t} ({names[t]!r})" for t in used[:3])
    same = f" (rows equal to within 1e-4: {len(used)} tokens)" if len(used) > 1 else ""
    return Finding(
        "input_mismatch",
        op,
        0.95,
        f"{op} at position {position}: B embeds the row of {which}{same}, not the token fed, {fed} "
        f"({names[fed]!r}): the decoder's input differs (a wrong start-of-transcript, language, task or "
        "timestamp token)",
    )


def _decoder_input(a, b, weights) -> Finding | None:
    """B's decoder read another encoder value than ln_post: its input, layer-normed with ln_post, is A's."""
    if a.shape != b.shape or not np.isfinite(b).all():
        return None
    x = np.asarray(b, np.float64)
    mu = x.mean(-1, keepdims=True)
    n = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    g, beta = (np.asarray(weights[f"encoder.ln_post.{k}"], np.float64) for k in ("weight", "bias"))
    err = _rel(a, n * g + beta)
    if err > 1e-3:
        return None
    return Finding(
        "input_mismatch",
        DECODER_INPUT,
        0.95,
        f"{DECODER_INPUT}: B's decoder was fed the encoder output before the final layer norm (the last block's "
        f"output): ln_post applied to B's input gives A's to rel L2 {err:.1e}; feed the decoder the encoder's "
        "ln_post",
    )


def _block_of(op: str) -> int | None:
    parts = op.split(".")
    return int(parts[2]) if len(parts) > 3 and parts[1] == "blocks" and parts[2].isdigit() else None


def _n_blocks(trace) -> int:
    return sum(1 for n in trace.ops if n.startswith("decoder.blocks.") and n.endswith(".out") and n.count(".") == 3)


def _last_block_out(trace) -> str | None:
    outs = [n for n in trace.ops if n.startswith("decoder.blocks.") and n.endswith(".out") and n.count(".") == 3]
    return outs[-1] if outs else None


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na = np.linalg.norm(a)
    return float(np.linalg.norm(b - a) / na) if na > 0 else math.inf


def decoder_summary(
    ta, tb, first: str | None, tolerances, view_of, weights=None, explained=frozenset()
) -> tuple[dict | None, list[Finding]]:
    """For two decoder traces: the first divergence as (op, position), the logits measures and the
    findings that name the decoder bug; (None, []) when A is not a decoder trace.

    view_of(op) -> function that puts B's array in A's layout (compare's alignment)."""
    if not is_decoder_trace(ta.manifest):
        return None, []
    layouts = decoder_layouts(ta.manifest)
    tokens = ta.manifest.get("decoder", {}).get("tokens")
    out = {
        "first_divergence": None,
        "tokens": tokens,
        "argmax_a": ta.manifest.get("decoder", {}).get("argmax"),
        "argmax_b": tb.manifest.get("decoder", {}).get("argmax"),
        "margin_a": ta.manifest.get("decoder", {}).get("margin"),
        "margin_b": tb.manifest.get("decoder", {}).get("margin"),
    }
    if (part := comparability(ta.manifest, tb.manifest).reason("part")) is not None:
        out["warning"] = part.warning
    elif tokens != tb.manifest.get("decoder", {}).get("tokens"):
        out["warning"] = (
            "the two decoder traces were not teacher-forced on the same tokens: positions are not comparable"
        )
    findings = []
    if first is not None and first in ta and first in tb and view_of(first) is not None:
        view = view_of(first)
        position = first_position(
            np.asarray(ta[first]), view(np.asarray(tb[first])), layouts.get(first), tolerances.for_op(first)
        )
        axis = "audio frame" if position_axis(layouts.get(first)) is None else "token position"
        out["first_divergence"] = {"op": first, "position": position, "axis": axis}
        findings = decoder_findings(first, position, ta, tb, view, weights, explained)
    if "decoder.logits" in ta and "decoder.logits" in tb and view_of("decoder.logits") is not None:
        out["logits"] = logit_measures(
            ta["decoder.logits"], view_of("decoder.logits")(np.asarray(tb["decoder.logits"])), tokens
        )
        change = out["logits"]["first_argmax_change"]
        if change is not None:
            change["a_text"], change["b_text"] = (token_text(ta.manifest, change[k]) for k in ("a_token", "b_token"))
    return out, findings


def token_text(manifest: dict, token: int) -> str | None:
    """A token's text by openai-whisper's tokenizer for the trace's model (its special tokens by name)."""
    from whisper.tokenizer import get_tokenizer

    dims = manifest.get("model", {}).get("dims") or {}
    n_vocab = dims.get("n_vocab")
    if not n_vocab:
        return None
    multilingual = n_vocab >= 51865
    tokenizer = get_tokenizer(multilingual, num_languages=n_vocab - 51765 - int(multilingual))
    return tokenizer.decode_with_timestamps([token]) if token < tokenizer.encoding.n_vocab else None
