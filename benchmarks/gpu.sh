#!/usr/bin/env bash
# One GPU run, ready for the few minutes a GPU machine is lent (issue 24): MAX on the GPU against torch
# on CUDA, tiny.en and large-v3 dims, float32 / float16 / bfloat16; every GPU trace is checked against
# the CPU float32 reference with the shipped tolerances, then the speed of one untapped encoder pass.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # from the repository root, after README's install command
#
# On a machine without a GPU it runs to its end, skipping each GPU part with one line. The whole run
# has a budget (GPU_BUDGET seconds, default 570, so that it fits one 10-minute lease call) and each step
# a limit (STEP_LIMIT, default 150) so one slow compile cannot eat the lease: the steps run most useful
# first, and a step that the budget no longer fits is skipped with one line. Prints figures; asserts nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/whisperdiff-gpu.XXXX)}
limit=${STEP_LIMIT:-150}
budget=${GPU_BUDGET:-570}
py=${PYTHON:-python3}
if ! command -v whisperdiff >/dev/null 2>&1; then
  echo "error: whisperdiff is not on PATH; run README's install command (or activate its environment) first" >&2
  exit 2
fi
mkdir -p "$out"
start=$SECONDS

allowed() {  # the seconds the next step may take: its limit, or what is left of the budget, less a margin
  local left=$((budget - (SECONDS - start) - 10))
  echo $((left < limit ? left : limit))
}

step() {  # step NAME COMMAND...: run within its time, say how it ended, never stop the script
  local name=$1
  shift
  local t=$(allowed)
  if ((t < 20)); then
    printf '%-34s skipped: the budget (%ss) is spent\n' "$name" "$budget"
    return
  fi
  local t0=$SECONDS
  # -k: a compile inside MAX or torch does not stop on SIGTERM; KILL follows 10 s later
  timeout -k 10 "$t" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local verdict=$( ((rc == 0)) && echo ok || { ((rc == 124 || rc == 137)) && echo "TIMED OUT after ${t}s" || echo "exit $rc"; })
  printf '%-34s %-22s %4ss  %s\n' "$name" "$verdict" "$((SECONDS - t0))" \
    "$(grep -E 'PASS|FAIL|error:|Error' "$out/$name.log" | head -1 | cut -c1-160)"
}

speed() {  # speed ARGS...: one line from gpu_speed.py, within the budget
  local t=$(allowed)
  if ((t < 20)); then
    echo "speed $*: skipped, the budget is spent"
    return
  fi
  timeout -k 10 "$t" "$py" benchmarks/gpu_speed.py "$@" 2>&1 | tail -1
}

explain() {  # explain NAME A B: what compare says of a float32 pair: the first divergence and its finding
  step "$1" whisperdiff compare "$2" "$3"
  [ -f "$out/$1.log" ] && grep -E -A3 'first divergence|no divergence' "$out/$1.log" | head -4 | sed 's/^/    /'
}

max_gpus=$("$py" -c "from max.driver import accelerator_count; print(accelerator_count())" 2>/dev/null || echo 0)
torch_cuda=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
echo "whisperdiff GPU run -> $out (budget ${budget}s, step limit ${limit}s)"
echo "MAX accelerators: $max_gpus; torch CUDA devices: $torch_cuda"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"

tolerance() { [ "$1" = float32 ] && echo float32 || echo half; }

tiny() {  # tiny DTYPE: MAX on the GPU and torch on CUDA at tiny.en, each checked against the CPU reference
  local dtype=$1
  if ((max_gpus > 0)); then
    step "max-gpu-tiny.en-$dtype" whisperdiff trace --impl max --device gpu --dtype "$dtype" --out "$out/max-gpu-tiny.en-$dtype"
    step "check-max-gpu-tiny.en-$dtype" whisperdiff check "$out/cpu-torch-tiny.en" "$out/max-gpu-tiny.en-$dtype" --tolerances "$(tolerance "$dtype")"
    if [ "$dtype" = float32 ]; then  # a GPU's float32 matmuls run as TF32: the gate for that, then why
      step check-tf32-max-gpu-tiny.en-float32 whisperdiff check "$out/cpu-torch-tiny.en" "$out/max-gpu-tiny.en-float32" --tolerances tf32
      explain compare-max-gpu-tiny.en-float32 "$out/cpu-torch-tiny.en" "$out/max-gpu-tiny.en-float32"
    fi
  else
    echo "skip: MAX on GPU, tiny.en, $dtype (MAX sees no accelerator)"
  fi
  if ((torch_cuda > 0)); then
    step "torch-cuda-tiny.en-$dtype" whisperdiff trace --impl torch --device cuda --dtype "$dtype" --out "$out/torch-cuda-tiny.en-$dtype"
    step "check-torch-cuda-tiny.en-$dtype" whisperdiff check "$out/cpu-torch-tiny.en" "$out/torch-cuda-tiny.en-$dtype" --tolerances "$(tolerance "$dtype")"
    [ "$dtype" = float32 ] && explain "compare-torch-cuda-tiny.en-$dtype" "$out/cpu-torch-tiny.en" "$out/torch-cuda-tiny.en-$dtype"
  else
    echo "skip: torch on CUDA, tiny.en, $dtype (torch sees no CUDA device)"
  fi
}

# The CPU float32 reference every tiny GPU trace is checked against (openai-whisper, hooked).
step cpu-torch-tiny.en whisperdiff trace --impl torch --device cpu --out "$out/cpu-torch-tiny.en"

# Most useful first: float32 agreement, then the speed of what was just compiled, then half precision.
tiny float32
echo "--- speed (one untapped encoder pass, shipped clip)"
if ((max_gpus > 0)); then speed --impl max --device gpu --dtype float32; else echo "skip: speed of MAX on GPU, tiny.en"; fi
if ((torch_cuda > 0)); then speed --impl torch --device cuda --dtype float32; else echo "skip: speed of torch on CUDA, tiny.en"; fi
tiny bfloat16

# large-v3 dims (32 layers, d_model 1280, 128 mel bins) with random weights: only on a GPU, where the
# compile and the 2.5 GB of encoder weights fit in the lease. The reference runs on CUDA in float32.
large=random:large-v3
if ((max_gpus > 0 && torch_cuda > 0)); then
  step torch-cuda-large-v3-float32 whisperdiff trace --impl torch --device cuda --model "$large" --out "$out/torch-cuda-large-v3"
  step max-gpu-large-v3-float32 whisperdiff trace --impl max --device gpu --model "$large" --out "$out/max-gpu-large-v3-float32"
  step check-max-gpu-large-v3-float32 whisperdiff check "$out/torch-cuda-large-v3" "$out/max-gpu-large-v3-float32" --tolerances tf32
  rm -rf "$out/torch-cuda-large-v3" "$out/max-gpu-large-v3-float32"  # 4.5 GB each
  speed --impl max --device gpu --dtype bfloat16 --model "$large"
  speed --impl torch --device cuda --dtype bfloat16 --model "$large"
else
  echo "skip: large-v3 dims on GPU (needs both MAX and torch to see a GPU)"
fi
tiny float16

# The CPU figures beside them (tiny.en only: large-v3 on 2 CPU cores is minutes per pass).
speed --impl max --device cpu --repeats 3
speed --impl torch --device cpu --repeats 3
echo "done in $((SECONDS - start)) s; logs and traces in $out"
