#!/usr/bin/env bash
# One GPU run, ready for the few minutes a GPU machine is lent (issue 24): MAX on the GPU against torch
# on CUDA, tiny.en and large-v3 dims, float32 / float16 / bfloat16; every GPU trace is checked against
# the CPU float32 reference with the shipped tolerances, then the speed of one untapped encoder pass.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # from the repository root, after README's install command
#
# On a machine without a GPU it runs to its end, skipping each GPU part with one line. Each step has
# its own time limit (STEP_LIMIT seconds, default 150) so one slow compile cannot eat the whole lease;
# the whole script stays under 10 minutes on an H100/H200-class machine. Prints figures; asserts nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/whisperdiff-gpu.XXXX)}
limit=${STEP_LIMIT:-150}
if ! command -v whisperdiff >/dev/null 2>&1; then
  echo "error: whisperdiff is not on PATH; run README's install command (or activate its environment) first" >&2
  exit 2
fi
mkdir -p "$out"
start=$SECONDS

step() {  # step NAME COMMAND...: run with a time limit, say how it ended, never stop the script
  local name=$1
  shift
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local verdict=$( ((rc == 0)) && echo ok || { ((rc == 124)) && echo "TIMED OUT after ${limit}s" || echo "exit $rc"; })
  printf '%-34s %-22s %4ss  %s\n' "$name" "$verdict" "$((SECONDS - t0))" "$(grep -E 'PASS|FAIL|error:' "$out/$name.log" | head -1)"
}

max_gpus=$(python -c "from max.driver import accelerator_count; print(accelerator_count())" 2>/dev/null || echo 0)
torch_cuda=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
echo "whisperdiff GPU run -> $out"
echo "MAX accelerators: $max_gpus; torch CUDA devices: $torch_cuda"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"

# The CPU float32 reference every GPU trace is checked against (openai-whisper, hooked).
step cpu-torch-tiny.en whisperdiff trace --impl torch --device cpu --out "$out/cpu-torch-tiny.en"

tolerance() { [ "$1" = float32 ] && echo float32 || echo half; }

for dtype in float32 float16 bfloat16; do
  if ((max_gpus > 0)); then
    step "max-gpu-tiny.en-$dtype" whisperdiff trace --impl max --device gpu --dtype "$dtype" --out "$out/max-gpu-tiny.en-$dtype"
    step "check-max-gpu-tiny.en-$dtype" whisperdiff check "$out/cpu-torch-tiny.en" "$out/max-gpu-tiny.en-$dtype" --tolerances "$(tolerance "$dtype")"
  else
    echo "skip: MAX on GPU, tiny.en, $dtype (MAX sees no accelerator)"
  fi
  if ((torch_cuda > 0)); then
    step "torch-cuda-tiny.en-$dtype" whisperdiff trace --impl torch --device cuda --dtype "$dtype" --out "$out/torch-cuda-tiny.en-$dtype"
    step "check-torch-cuda-tiny.en-$dtype" whisperdiff check "$out/cpu-torch-tiny.en" "$out/torch-cuda-tiny.en-$dtype" --tolerances "$(tolerance "$dtype")"
  else
    echo "skip: torch on CUDA, tiny.en, $dtype (torch sees no CUDA device)"
  fi
done

# large-v3 dims (32 layers, d_model 1280, 128 mel bins) with random weights: only on a GPU, where the
# compile and the 2.5 GB of encoder weights fit in the lease. The reference runs on CUDA in float32.
large=random:large-v3
if ((max_gpus > 0 && torch_cuda > 0)); then
  step torch-cuda-large-v3-float32 whisperdiff trace --impl torch --device cuda --model "$large" --out "$out/torch-cuda-large-v3"
  for dtype in float32 bfloat16; do
    step "max-gpu-large-v3-$dtype" whisperdiff trace --impl max --device gpu --dtype "$dtype" --model "$large" --out "$out/max-gpu-large-v3-$dtype"
    step "check-max-gpu-large-v3-$dtype" whisperdiff check "$out/torch-cuda-large-v3" "$out/max-gpu-large-v3-$dtype" --tolerances "$(tolerance "$dtype")"
  done
else
  echo "skip: large-v3 dims on GPU (needs both MAX and torch to see a GPU)"
fi

# Speed of one untapped encoder pass: MAX vs torch on each device that is there.
echo "--- speed (one untapped encoder pass, shipped clip)"
for model in default random:large-v3; do
  for dtype in float32 bfloat16; do
    if ((max_gpus > 0)); then
      timeout "$limit" python benchmarks/gpu_speed.py --impl max --device gpu --dtype "$dtype" --model "$model" 2>&1 | tail -1
    else
      echo "skip: speed of MAX on GPU, $model, $dtype"
    fi
    if ((torch_cuda > 0)); then
      timeout "$limit" python benchmarks/gpu_speed.py --impl torch --device cuda --dtype "$dtype" --model "$model" 2>&1 | tail -1
    else
      echo "skip: speed of torch on CUDA, $model, $dtype"
    fi
  done
done
# The CPU figure beside them (tiny.en only: large-v3 on 2 CPU cores is minutes per pass).
timeout "$limit" python benchmarks/gpu_speed.py --impl max --device cpu --repeats 3 2>&1 | tail -1
timeout "$limit" python benchmarks/gpu_speed.py --impl torch --device cpu --repeats 3 2>&1 | tail -1
echo "done in $((SECONDS - start)) s; logs and traces in $out"
