#!/usr/bin/env bash
# One prepared GPU check, under 5 minutes on one H100/H200: training target tokens/s and MFU against the card's
# measured bf16 matmul peak (decaylab's Trainer step vs the seed-style loop, fp32 and bf16), plus the K = 8
# vectorized-vs-sequential sweep ratio when benchmarks/vectorized_sweep.py exists.
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/*_gpu.json and prints a summary
#
# Not part of `make bench` (that one runs benchmarks/*.py on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT"
started=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"$PY" - <<'PY' || { echo "gpu_check: torch sees no CUDA device" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
PY

# 1. Training throughput on the GPU: a bigger model and batch than the CPU run (the small one is launch-bound),
#    no torch.compile row (its compile time alone would eat the budget), no CPU op profile.
timeout 240 "$PY" benchmarks/train_throughput.py --device cuda --quick --preset base --batch-tokens 8192 \
    --rows baseline,ours,ours_bf16,ours_gru --reps 3 --rep-batches 4 --no-profile \
    --out "$OUT/train_throughput_gpu.json"
status_train=$?

# 2. K = 8 vectorized sweep vs 8 sequential runs (issue 6 part 3), if that benchmark exists and takes --device.
status_vec=skipped
if [ -f benchmarks/vectorized_sweep.py ] && "$PY" benchmarks/vectorized_sweep.py --help 2>/dev/null | grep -q -- "--device"; then
    timeout $((290 - ($(date +%s) - started))) "$PY" benchmarks/vectorized_sweep.py --device cuda --quick \
        --out "$OUT/vectorized_sweep_gpu.json"
    status_vec=$?
fi

"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
train = out / "train_throughput_gpu.json"
if train.is_file():
    r = json.loads(train.read_text())
    peak = r["peak_gflops"]
    print(f"\n{r['machine'].get('gpu')}: measured matmul peak fp32 {peak['fp32'] / 1e3:.1f} TFLOP/s, "
          f"bf16 {peak['bf16'] / 1e3:.1f} TFLOP/s")
    for name, row in r["rows"].items():
        print(f"  {name:<12} {row['target_tokens_per_s']:>10.0f} target tok/s  {row['ratio_vs_baseline']:5.2f}x baseline"
              f"  MFU vs bf16 peak {row['useful_gflops_per_s'] / peak['bf16']:6.1%}")
    print(f"  bf16 val-loss parity: {r['val_loss_parity'].get('bf16_relative_difference')}")
vec = out / "vectorized_sweep_gpu.json"
if vec.is_file():
    v = json.loads(vec.read_text())
    print(f"vectorized K=8 vs sequential: ratio {v.get('ratio')} (goal {v.get('goal')})")
PY
echo "gpu_check: train_throughput exit $status_train, vectorized_sweep $status_vec, $(( $(date +%s) - started )) s"
[ "$status_train" = 0 ]
