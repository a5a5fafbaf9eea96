"""Two traces in, a `Comparison` out: typed per-op results, comparability, replay on the candidate's own inputs,
hypotheses by op type, findings; per-tensor weight comparison. Nothing here re-runs the implementation under
test (compare's optional transcripts use openai-whisper's own decoder); the experiments that do (patch,
crossfeed, sweep) sit in the layer above."""
