"""The second held-out diagnosis set, scored: `whisperdiff compare` on bugs planted in a functional torch port.

    python benchmarks/diagnosis_heldout2.py                         # embedded tiny.en, shipped clip, both halves
    python benchmarks/diagnosis_heldout2.py --part decoder --only kv-ring-buffer-8 --json out.json
    python benchmarks/diagnosis_heldout2.py --jobs 2 --work /tmp/heldout2 --keep

The port is Whisper written from scratch in plain torch over a weight dict of its own layout, with its
own log-mel frontend and KV cache (benchmarks/heldout2_ports.py): neither whisperdiff's nor transformers'.
The bugs and what counts as naming them are in benchmarks/heldout2_bugs.py, written without reading
whisperdiff's analysis code. The runs, scoring rules and false-alarm checks are those of
benchmarks/diagnosis_heldout.py (this is its `--set 2`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnosis_heldout import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--set", "2", *sys.argv[1:]]))
