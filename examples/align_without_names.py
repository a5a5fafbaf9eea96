"""Capture a MAX encoder with no names given and let whisperdiff line its values up with the reference.

    python examples/align_without_names.py maxnn     # examples/max_nn_encoder.py's max.nn Encoder (a module)
    python examples/align_without_names.py own       # whisperdiff's own MAX encoder (a build function)

Neither is told which value is which op: `mark_all` records every value the graph computes, the
values shaped like a canonical op become outputs, and `automap` decides by layout, order and agreement
with the torch reference. Prints the alignment and writes the trace and its map (OUT.map.toml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    import whisperdiff as wd
    from whisperdiff.capture.captured_trace import trace_captured
    from whisperdiff.capture.graph_capture import mark_all

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["maxnn", "own"])
    parser.add_argument("--model", default=None)
    parser.add_argument("--reference", default=None, help="torch reference trace (default: traced if missing)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from max import engine
    from max.driver import CPU
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    model = wd.load_model(args.model)
    d = model.dims
    ref_path = Path(args.reference or f"traces/torch-{model.model_id}-speech")
    if not (ref_path / "manifest.json").is_file():
        wd.trace("torch", model=model, out=ref_path)
    reference = wd.load_trace(ref_path)
    out = args.out or f"traces/{args.which}-auto-{model.model_id}-speech"
    session = engine.InferenceSession(devices=[CPU()])
    if args.which == "maxnn":
        sys.path.insert(0, str(HERE))
        import max_nn_encoder as ex

        encoder = ex.Encoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, DeviceRef.CPU())
        encoder.load_state_dict(ex.whisper_weights(model.state_dict))
        mel_type = TensorType(DType.float32, [1, d.n_mels, 2 * d.n_audio_ctx], device=DeviceRef.CPU())
        with Graph("maxnn_auto", input_types=[mel_type]) as graph, mark_all(encoder, select="canonical", dims=d) as cap:
            graph.output(encoder(graph.inputs[0].tensor))
        compiled = session.load(graph, weights_registry=encoder.state_dict())
        extra = []
    else:
        from whisperdiff.capture.max_encoder import build_graph
        from whisperdiff.capture.max_runner import encoder_weights

        with mark_all(select="canonical", dims=d) as cap:  # a build function: no module, file:line only
            graph, _ = build_graph(d, ["ln_post"])  # the clean encoder: the mel is its only input
        compiled = session.load(graph, weights_registry=encoder_weights(model))
        extra = []
    print(f"captured {len(cap.values)} values; {len(cap.chosen)} shaped like a canonical op became outputs")
    amap = trace_captured(
        out,
        cap,
        lambda mel: compiled.execute(np.ascontiguousarray(mel, np.float32), *extra),
        model=model,
        impl=f"{args.which} (captured, no names)",
        reference=reference,
        map_path=f"{out}.map.toml",
    )
    for line in amap.lines():
        print(line)
    print(amap.summary())
    print(f"wrote {out} and {out}.map.toml")


if __name__ == "__main__":
    main()
