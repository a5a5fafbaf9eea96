#!/usr/bin/env bash
# The four example reports of the README, under reports/: MAX vs torch on the embedded default
# (clean), and MAX with three injected porting bugs, with both transcripts and (for the bugs) the
# activation-patching chart. Each report also gets a screenshot (PNG) when
# Chromium is installed. Run from the repository root after installing: bash examples/reports.sh
set -euo pipefail
ref=traces/torch-tiny.en-speech
whisperdiff trace --impl torch --transcribe --out "$ref"
shot() { if command -v chromium >/dev/null 2>&1; then echo --screenshot "reports/$1.png"; fi; }

whisperdiff trace --impl max --transcribe --out traces/max-tiny.en-speech
whisperdiff report "$ref" traces/max-tiny.en-speech -o reports/clean.html $(shot clean)
for bug in missing-ln-post variance-rescale mel-frontend; do
  whisperdiff trace --impl max --transcribe --inject "$bug" --out "traces/max-tiny.en-speech+$bug"
  whisperdiff report "$ref" "traces/max-tiny.en-speech+$bug" --patch -o "reports/$bug.html" $(shot "$bug")
done
