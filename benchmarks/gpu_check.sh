#!/usr/bin/env bash
# The GPU check, in one call on a machine with one NVIDIA GPU and no network, from the repository's root:
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--steps install,tests,bench,rnn,sweep,tour] [--out DIR] [--wheels DIR]
#
# Steps, in order, each under its own time cap (seconds, overridable as CAP_<STEP>=N) so one that hangs leaves
# the rest their time, each step's output in DIR/<step>.log and its exit status in DIR/summary.txt. The caps add
# up to 555 s, inside one 10-minute call; --steps reruns the steps that need it:
#   install  jaxarch into the image's Python without network: the dependencies the image lacks come as wheels
#            from --wheels (fetch them where pip works: `python3 -m pip download --no-deps --only-binary=:all:
#            --python-version 3.12 --implementation cp -d .whl ml_collections==1.1.0 mnist1d==0.0.2.post1
#            tensorboardX==2.6.5`), then jaxarch itself, editable, with --no-deps;
#   tests    the attention, conformance and cuDNN LSTM tests on the GPU (the cuDNN attention and LSTM paths);
#   bench    `jaxarch bench --families attention,gpt,conv,lstm --sizes reference,large --no-scaling` (bfloat16 on a
#            GPU; PyTorch as peer where the image has it), with its model-FLOP utilisation per workload;
#   rnn      benchmarks/rnn.py in float32: the LSTM on cuDNN's kernel and on jaxarch's own path, beside PyTorch's
#            cuDNN LSTM;
#   sweep    the sweep strategies' bench row (vmap against sequential members);
#   tour     `jaxarch tour`'s wall time.
# At the end DIR/gpu_check.tgz holds every log and result (the device tool returns at most 8 files).
#
# --dry-run runs every step on whatever JAX finds (the CPU here), in the current environment, at the smallest
# sizes: tests collected rather than run, quick benchmarks, a two-model tour. It checks the script, not the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
steps="install,tests,bench,rnn,sweep,tour"
out="${OUT:-benchmarks/results/gpu_check}"
wheels=".whl"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --steps) steps="$2"; shift ;;
    --out) out="$2"; shift ;;
    --wheels) wheels="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1, expected --dry-run, --steps, --out or --wheels" >&2; exit 2 ;;
  esac
  shift
done
for step in ${steps//,/ }; do
  case "$step" in install|tests|bench|rnn|sweep|tour) ;; *)
    echo "gpu_check.sh: --steps holds $step, expected some of install,tests,bench,rnn,sweep,tour" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
: > "$out/summary.txt"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python="${PYTHON:-python3}"
workdir="$(mktemp -d)"

# run STEP CAP COMMAND...: the command under `timeout CAP`, its output in $out/STEP.log and on stdout.
run() {
  local step="$1" cap="$2"; shift 2
  local override="CAP_${step^^}"
  cap="${!override:-$cap}"
  echo "== $step (cap ${cap}s): $*" | tee "$out/$step.log"
  local start=$SECONDS
  timeout "$cap" "$@" 2>&1 | tee -a "$out/$step.log"
  local status=${PIPESTATUS[0]}
  echo "$step exit=$status seconds=$((SECONDS - start))" | tee -a "$out/summary.txt"
}

wanted() { [[ ",$steps," == *",$1,"* ]]; }

"$python" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$out/devices.txt"
command -v nvidia-smi > /dev/null && nvidia-smi -L >> "$out/devices.txt" 2>&1

if wanted install; then
  if [ "$dry_run" = 1 ]; then
    run install 60 "$python" -m pip --version
  else
    run install 60 bash -c "$python -m pip install -q --no-index --no-deps $wheels/*.whl \
      && $python -m pip install -q --no-index --no-deps --no-build-isolation -e ."
  fi
fi
if wanted tests; then
  selection=(tests/test_attention.py tests/test_attention_masks.py tests/test_conformance.py
             tests/test_recurrent_cudnn.py)
  if [ "$dry_run" = 1 ]; then
    run tests 120 "$python" -m pytest -q --collect-only "${selection[@]}"
  else
    # Full float32 matmuls: on the GPU XLA and cuDNN default to TF32, and the tests compare float32 results.
    run tests 120 env JAX_DEFAULT_MATMUL_PRECISION=highest "$python" -m pytest -q -p no:cacheprovider \
      "${selection[@]}"
  fi
fi
if wanted bench; then
  if [ "$dry_run" = 1 ]; then
    run bench 240 "$python" -m jaxarch.cli bench --quick --families attention --no-torch --no-scaling \
      --out "$out/bench.json"
  else
    run bench 150 "$python" -m jaxarch.cli bench --families attention,gpt,conv,lstm --sizes reference,large \
      --no-scaling --out "$out/bench.json"
  fi
fi
if wanted rnn; then
  if [ "$dry_run" = 1 ]; then
    run rnn 120 "$python" -m jaxarch.benchmarks.rnn --quick --no-torch --out "$out/rnn.json"
  else
    run rnn 60 "$python" -m jaxarch.benchmarks.rnn --out "$out/rnn.json"
  fi
fi
if wanted sweep; then
  if [ "$dry_run" = 1 ]; then
    run sweep 120 "$python" -m jaxarch.benchmarks.sweep --members 2 "model.features=(8,16)" train.batch_size=32
  else
    run sweep 45 "$python" -m jaxarch.benchmarks.sweep --members 8
  fi
fi
if wanted tour; then
  if [ "$dry_run" = 1 ]; then
    run tour 300 "$python" -m jaxarch.cli tour --models mnist1d-logreg,mnist1d-mlp --workdir "$workdir/tour" \
      --no-progress
  else
    run tour 120 "$python" -m jaxarch.cli tour --workdir "$workdir/tour" --no-progress
  fi
fi

tar -czf "$workdir/gpu_check.tgz" -C "$out" --exclude gpu_check.tgz . && mv "$workdir/gpu_check.tgz" "$out/"
rm -rf "$workdir"
cat "$out/summary.txt"
! grep -qv "exit=0 " "$out/summary.txt"
