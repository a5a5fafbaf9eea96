"""Two traces in, a `Comparison` out: metrics, alignment, replay on the candidate's inputs, diagnosis, and the
"does it matter" tools (transcripts, activation patching, weights). Pure with respect to the runners."""
