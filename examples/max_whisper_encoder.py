"""MAX 26.7's own Whisper encoder (max.pipelines.architectures.whisper.encoder.WhisperEncoder), unedited,
checked and traced by whisperdiff against openai-whisper on the embedded default (tiny.en, shipped clip).

    python examples/max_whisper_encoder.py                 # the shipped encoder: preflight, no compile
    python examples/max_whisper_encoder.py --fixed         # examples/max_whisper_encoder_fixed.py: trace it
    python examples/max_whisper_encoder.py --fixed --plant reshape-mel    # or attn-scale: a planted mistake
    python examples/max_whisper_encoder.py --fixed --plant attn-scale --bisect --use-map traces/maxpipe-tiny.en-speech.map.toml
    whisperdiff check traces/torch-tiny.en-speech traces/maxpipe-tiny.en-speech --tolerances float32

Needs `pip install -e ".[ports]"` (max.pipelines imports transformers and av). The only workaround
applied to the shipped module is the one a user can make without editing it: the config attribute it
reads (`n_heads`) is set on the config object. Nothing names a single op or weight: whisperdiff
captures every value the graph computes, lines them up with the reference itself, maps the
checkpoint's weights onto the module by shape and value, and writes both maps to one editable file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def whisper_config(dims):
    """A Hugging Face WhisperConfig for these dims, built locally (nothing is downloaded)."""
    from transformers import WhisperConfig

    return WhisperConfig(
        num_mel_bins=dims.n_mels,
        d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        encoder_ffn_dim=4 * dims.n_audio_state,
        max_source_positions=dims.n_audio_ctx,
    )


def shipped_encoder_class():
    from max.pipelines.architectures.whisper.encoder import WhisperEncoder

    return WhisperEncoder


def fixed_encoder_module(plant: str | None):
    import importlib.util

    spec = importlib.util.spec_from_file_location("max_whisper_encoder_fixed", HERE / "max_whisper_encoder_fixed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PLANT = plant
    return module


def reference_trace(path: str | None, model):
    """The torch reference on the embedded default (traced now if it is not there yet)."""
    import whisperdiff as wd

    path = Path(path or f"traces/torch-{model.model_id}-speech")
    if not (path / "manifest.json").is_file():
        wd.trace("torch", model=model, out=path)
    return wd.load_trace(path)


def preflight_shipped(model) -> int:
    """Every build-time mistake of the shipped module, one line each, without compiling."""
    from max.dtype import DType
    from max.graph import DeviceRef

    from whisperdiff.capture.preflight import preflight

    WhisperEncoder = shipped_encoder_class()  # noqa: N806
    config = whisper_config(model.dims)
    report = preflight(
        lambda: WhisperEncoder(config, DType.float32, DeviceRef.CPU()),
        model,
        workaround=lambda: setattr(config, "n_heads", config.encoder_attention_heads),
    )
    for line in report.lines():
        print(line)
    return 1 if report.findings else 0


def trace_fixed(
    model,
    out: str,
    plant: str | None,
    reference: str | None,
    map_path: str | None,
    saved_map: str | None,
    observer: bool = False,
) -> int:
    import time

    import numpy as np
    from max import engine
    from max.driver import CPU
    from max.dtype import DType
    from max.graph import DeviceRef, Graph

    from whisperdiff.capture.captured_trace import trace_captured
    from whisperdiff.capture.graph_capture import capture
    from whisperdiff.capture.preflight import preflight
    from whisperdiff.mapping.maps import read_map
    from whisperdiff.mapping.weightmap import from_rules, propose

    fixed = fixed_encoder_module(plant)
    config = whisper_config(model.dims)
    # the encoder's weights only, named first (a random model makes each tensor when it is read)
    reference_sd = {k: model.state_dict[k].float().numpy() for k in model.state_dict if k.startswith("encoder.")}
    report = preflight(lambda: fixed.WhisperEncoder(config, DType.float32, DeviceRef.CPU()), model)
    for line in report.lines():
        print(line)
    if report.blocking:
        return 1
    encoder = report.module
    saved = read_map(saved_map) if saved_map else None
    declared = {k: tuple(int(d) for d in w.shape) for k, w in encoder.raw_state_dict().items()}
    wmap = from_rules(saved["weights"], reference_sd) if saved and saved["weights"] else propose(declared, reference_sd)
    encoder.load_state_dict(wmap.load(reference_sd))  # the reference's weights, through the map: no adapter
    # The weights the port now holds, matched to the checkpoint again by their numbers alone.
    by_value = propose({k: np.asarray(v) for k, v in encoder.state_dict().items()}, reference_sd)
    n_value = sum(m.basis == "value" for m in by_value.matches)
    print(
        f"weights: {len(wmap.matches)} of {len(declared)} mapped by {'the saved map' if saved else 'shape and name'}; "
        f"{n_value} of {len(reference_sd_enc(reference_sd))} confirmed by value "
        f"({', '.join(sorted({m.layout for m in by_value.matches}))})"
    )
    with (
        Graph("maxpipe_whisper_encoder", input_types=list(encoder.input_types())) as graph,
        capture(encoder, select="canonical", dims=model.dims) as cap,
    ):
        graph.output(*encoder(graph.inputs[0].tensor))
    print(f"captured {len(cap.values)} values, {len(cap.chosen)} of them shaped like a canonical op")
    start = time.perf_counter()
    compiled = engine.InferenceSession(devices=[CPU()]).load(graph, weights_registry=encoder.state_dict())
    print(f"compiled in {time.perf_counter() - start:.0f} s")
    untapped = None
    if observer:  # the same module without the extra outputs: one more compile
        encoder_plain = fixed.WhisperEncoder(config, DType.float32, DeviceRef.CPU())
        encoder_plain.load_state_dict(wmap.load(reference_sd))
        with Graph("maxpipe_whisper_encoder_untapped", input_types=list(encoder_plain.input_types())) as plain_graph:
            plain_graph.output(*encoder_plain(plain_graph.inputs[0].tensor))
        plain = engine.InferenceSession(devices=[CPU()]).load(plain_graph, weights_registry=encoder_plain.state_dict())
        untapped = lambda mel: plain.execute(np.ascontiguousarray(mel, np.float32))[0].to_numpy()  # noqa: E731
    ref = reference_trace(reference, model)
    amap = trace_captured(
        out,
        cap,
        lambda mel: compiled.execute(np.ascontiguousarray(mel, np.float32)),
        model=model,
        impl="max.pipelines WhisperEncoder (fixed copy)",
        reference=ref,
        saved=saved,  # the whole map: its [graph] is checked against this capture too
        map_path=map_path or f"{out}.map.toml",
        info={"plant": plant, "source": "examples/max_whisper_encoder_fixed.py"},
        weights=wmap.rules(),
        untapped=untapped,
    )
    print(amap.summary())
    if untapped is not None:
        effect = wd_load(out).manifest["runner"]["observer_effect"]
        print(
            f"observer effect: the tapped graph's output differs from the untapped graph's by max abs "
            f"{effect['max_abs']:.2e}, rel L2 {effect['rel_l2']:.2e}"
        )
    for m in amap.matches:
        if m.confidence < 0.9:
            print(f"  {m.name} <- {m.key} ({m.basis}, confidence {m.confidence:.2f})")
    if amap.unmatched:
        print(f"  not aligned: {', '.join(amap.unmatched)}")
    print(f"wrote {out} and its map {map_path or f'{out}.map.toml'}")
    return 0


def bisect_fixed(model, out: str, plant: str | None, reference: str | None, saved_map: str) -> int:
    """wd.bisect_port on the fixed copy (with `plant`): one graph, built under mark_all with each step's select
    and loaded with the weights the saved map (of a full capture: --fixed --map) names."""
    import numpy as np
    from max import engine
    from max.driver import CPU
    from max.dtype import DType
    from max.graph import DeviceRef, Graph

    import whisperdiff as wd
    from whisperdiff.mapping.maps import read_map
    from whisperdiff.mapping.weightmap import from_rules

    saved = read_map(saved_map)
    reference_sd = {k: model.state_dict[k].float().numpy() for k in model.state_dict if k.startswith("encoder.")}
    fixed = fixed_encoder_module(plant)

    def build(select):
        encoder = fixed.WhisperEncoder(whisper_config(model.dims), DType.float32, DeviceRef.CPU())
        encoder.load_state_dict(from_rules(saved["weights"], reference_sd).load(reference_sd))
        with (
            Graph("maxpipe_whisper_encoder", input_types=list(encoder.input_types())) as graph,
            wd.mark_all(encoder, select=select, dims=model.dims) as cap,
        ):
            graph.output(*encoder(graph.inputs[0].tensor))
        compiled = engine.InferenceSession(devices=[CPU()]).load(graph, weights_registry=encoder.state_dict())
        return cap, lambda mel: compiled.execute(np.ascontiguousarray(mel, np.float32))

    b = wd.bisect_port(reference_trace(reference, model), build, saved=saved, out=out, on_status=print)
    for n, s in enumerate(b.steps, start=1):
        print(
            f"step {n}: {s.tap_count} ops, build and load {s.compile_seconds:.1f} s, run and compare "
            f"{s.run_seconds:.1f} s, first divergence {s.first_divergence}"
        )
    print(b.comparison.findings[0].message if b.comparison.findings else "no finding")
    return 0


def wd_load(path):
    import whisperdiff as wd

    return wd.load_trace(path)


def reference_sd_enc(sd: dict) -> list[str]:
    return [k for k in sd if k.startswith("encoder.")]


def main() -> None:
    import whisperdiff as wd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed", action="store_true", help="trace examples/max_whisper_encoder_fixed.py")
    parser.add_argument("--plant", choices=["reshape-mel", "attn-scale"], default=None, help="with --fixed")
    parser.add_argument("--model", default=None, help="whisperdiff model spec (default: the embedded tiny.en)")
    parser.add_argument("--reference", default=None, help="torch reference trace (default: traced if missing)")
    parser.add_argument("--map", dest="map_path", default=None, help="where to write the map (default OUT.map.toml)")
    parser.add_argument("--use-map", default=None, help="a saved map to align and load weights by")
    parser.add_argument(
        "--observer",
        action="store_true",
        help="also compile the untapped graph and record how far the tapped graph's output is from it",
    )
    parser.add_argument(
        "--bisect", action="store_true", help="with --fixed and --use-map: wd.bisect_port instead of a full capture"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = wd.load_model(args.model)
    if not args.fixed:
        sys.exit(preflight_shipped(model))
    out = args.out or f"traces/maxpipe-{model.model_id}-speech" + (f"+{args.plant}" if args.plant else "")
    if args.bisect:
        if not args.use_map:
            parser.error("--bisect needs --use-map: the map of a full capture of the port (--fixed --map FILE)")
        sys.exit(bisect_fixed(model, out + "-bisect", args.plant, args.reference, args.use_map))
    sys.exit(trace_fixed(model, out, args.plant, args.reference, args.map_path, args.use_map, args.observer))


if __name__ == "__main__":
    main()
