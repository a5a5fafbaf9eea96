"""Teacher-forced decoding time: the MAX decoder graph against openai-whisper's TextDecoder (issue 24).

Prints figures; asserts nothing. Both decoders run on the same encoder output (torch's, the embedded
tiny.en on the shipped clip) and the same tokens (openai-whisper's greedy ones), through the same
`teacher_forced` loop `whisperdiff trace-decoder` uses, with every default tap recorded. Runs are
interleaved over rounds (torch, max, torch, max, ...) so machine noise falls on both alike; each figure
is the median over rounds with its spread (min-max), and the ratio is torch's median over MAX's
(above 1: MAX is faster).

    python benchmarks/decoder_speed.py                 # 5 rounds
    python benchmarks/decoder_speed.py --rounds 3 --also old:/path/to/old_max_decoder.py

--also LABEL:FILE.py adds another MAX decoder runner (FILE's MaxDecoderRunner) to the rounds, e.g. a
copy of an earlier max_decoder.py, so a before/after comparison comes from one run. The MAX graph must be
in MAX's cache already (run the decoder tests or `trace-decoder --impl max` once): a cold compile is not
what this measures.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path


def load_runner_class(path: str):
    spec = importlib.util.spec_from_file_location(f"decoder_speed_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(path).parent))  # its own siblings (a copied max_encoder.py)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.MaxDecoderRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--also", action="append", default=[], metavar="LABEL:FILE.py")
    args = parser.parse_args()

    from whisperdiff.capture import make_decoder_runner
    from whisperdiff.capture.decoder import encoder_features, greedy, prompt_tokens, teacher_forced
    from whisperdiff.inputs.audio import prepare_input
    from whisperdiff.inputs.models import load_model
    from whisperdiff.names import select_decoder_taps

    loaded = load_model(None)
    features = encoder_features(loaded, prepare_input(loaded.dims.n_mels).mel, "torch")
    prompt = prompt_tokens(loaded)
    runners = {"torch": make_decoder_runner("torch", loaded)}
    tokens = greedy(runners["torch"], loaded, features)[1]
    sequence = prompt + tokens
    taps = set(select_decoder_taps(loaded.dims, "default", len(sequence)))
    runners["torch"] = make_decoder_runner("torch", loaded, taps=sorted(taps))
    runners["max"] = make_decoder_runner("max", loaded, taps=sorted(taps))
    for spec in args.also:
        label, path = spec.split(":", 1)
        runners[label] = load_runner_class(path)(loaded, taps=sorted(taps))

    def once(runner) -> float:
        start = time.perf_counter()
        teacher_forced(runner, features, sequence, len(prompt), loaded.dims, lambda n, v: None)
        return time.perf_counter() - start

    for runner in runners.values():  # warm-up: first-run allocations, lazy kernel loads
        once(runner)
    times = {label: [] for label in runners}
    for _ in range(args.rounds):
        for label, runner in runners.items():
            times[label].append(once(runner))

    print(f"teacher-forced decode, tiny.en, {len(sequence)} tokens ({len(tokens) + 1} steps), default taps, CPU")
    print(f"{'decoder':<10} {'median s':>9} {'min-max s':>15}  torch/this")
    torch_median = statistics.median(times["torch"])
    for label, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"{label:<10} {median:>9.3f} {spread:>15}  {torch_median / median:.2f}x")


if __name__ == "__main__":
    main()
