#!/usr/bin/env bash
# The checks a lent GPU machine gets, in order of value, each bounded in time, so that a
# cut-off run still returns what it finished. Needs only torch, numpy, pyarrow, pyyaml
# (no Ray, MLflow or pynwb: GPU images rarely have them). Results go to $OUT (default
# /tmp/gpu_check); docs/PERFORMANCE.md records the last run.
#
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}    # DEVICE=cpu BENCH_EXTRA=--smoke: a dry run of this script on a CPU
BENCH_EXTRA=${BENCH_EXTRA:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg TQDM_DISABLE=1
work=$(mktemp -d)
bench() { timeout "$1" "$PY" benchmarks/bench_train.py --device "$DEVICE" $BENCH_EXTRA \
              --out "$OUT/bench.jsonl" "${@:2}" 2>&1 | tee -a "$OUT/bench.txt"; }
step() { echo "== $(date +%T) $*" | tee -a "$OUT/bench.txt"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "cpus $(nproc)"; } > "$OUT/machine.txt" 2>&1

# 1. the same numbers as on the CPU, and checkpoints that move between devices
step "tests/test_cuda.py"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.txt" 2>&1

# 2. the user's path: simulate, train on the GPU, infer from that checkpoint on the CPU
step "cli: simulate, train --device cuda, infer on cpu"
{ timeout 60 "$PY" -m mrlfads.training.cli simulate memory-ring --out "$work/ring" --smoke-test &&
  timeout 90 "$PY" -m mrlfads.training.cli train --data "$work/ring" --smoke-test --epochs 8 --device "$DEVICE" \
      --no-tracking --quiet --out "$work/run" &&
  CUDA_VISIBLE_DEVICES="" timeout 60 "$PY" -m mrlfads.training.cli infer --model "$work/run/best.pt" \
      --data "$work/ring" --out "$work/infer" && ls "$work/infer"; echo "cli rc=$?"; } > "$OUT/cli.txt" 2>&1

# 3. speed at the SPEC size, in `mrlfads train`'s own step (training/step.py): eager and
#    CUDA graph at batch 16, 64 and 256 (the oracle and eager packing: docs/PERFORMANCE.md)
step "the training step: CUDA graph"
bench 120 --batches 16 64 256 --impls fast --modes graph --steps 20 --worker-timeout 60
step "the training step: eager"
bench 100 --batches 16 64 256 --impls fast --steps 20 --worker-timeout 40
# 4. trials per GPU: N processes training at once on the one GPU (what Ray's fractional
#    GPUs do), batch 16, one CPU thread each, graphed (the sweep's default)
step "packing, graphed"
bench 150 --batches 16 --pack 1 2 4 8 --modes graph --pack-warmup 30 --pack-seconds 8 --threads 1
# 5. bfloat16 autocast (torch.compile: `bench_train.py --modes compile`, by hand; minutes)
step "amp"
bench 40 --batches 64 --modes amp --steps 20 --worker-timeout 35
step "done"
