#!/usr/bin/env bash
# One prepared GPU check, under 10 minutes on one H100/H200 (run it with timeout_s 600; lower VEC_TIMEOUT first):
#   1. the K = 8 vectorized-vs-sequential sweep ratio at three model sizes (issue 6 parts 3-4, goal >= 4x);
#   2. the host syncs left in one Trainer step (torch's sync debug mode), then training target tokens/s and MFU
#      against the card's measured bf16 matmul peak (decaylab's Trainer step vs the seed-style loop, fp32 and
#      bf16);
#   3. the decoder LM's training step against the nanoGPT-style loop (issue 13: >= 1.0x, fp32 and bf16), at GPT-2
#      small's width and depth.
#
#   bash benchmarks/gpu_check.sh            # writes $OUT_DIR (default benchmarks/results)/*_gpu.json + a summary
#
# Not part of `make bench` (that one runs benchmarks/*.py on the CPU). Each part has its own time box, so one
# that hangs or fails still leaves the other's result.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"$PY" - <<'PY' || { echo "gpu_check: torch sees no CUDA device" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
PY

# 1. K = 8 replicas in one stack vs 8 sequential Trainer runs, same steps, same data, same initial weights; then
#    K = 16 at the small preset, and the recurrence alone (hand-written backward vs autograd loop).
timeout "${VEC_TIMEOUT:-120}" "$PY" benchmarks/vectorized_sweep.py --device cuda --pairs 4000 --steps-scale 4.5 \
    --out "$OUT/vectorized_sweep_gpu.json"
status_vec=$?
timeout 75 "$PY" benchmarks/vectorized_sweep.py --device cuda --pairs 4000 --steps-scale 4.5 --k 16 --sizes small \
    --out "$OUT/vectorized_sweep_gpu_k16.json" || status_vec=$?
timeout 40 "$PY" benchmarks/stacked_recurrence.py --device cuda --quick --out "$OUT/stacked_recurrence_gpu.json" \
    || status_vec=$?
# The base preset's GPU drift (docs/benchmarks.md §3c): the CPU comparison's exact settings, on the GPU. A small
# Δ here points at the training regime of the larger-batch run; a large one at the GPU path.
timeout 60 "$PY" benchmarks/vectorized_sweep.py --device cuda --k 2 --sizes base --steps-scale 5 --pairs 2000 \
    --batch-tokens 2048 --out "$OUT/vectorized_sweep_base_k2_30steps_gpu.json" || status_vec=$?

# Host syncs left in one training step (torch's sync debug mode warns at each one, with the Python line that
# caused it): the Trainer's step is written to have none, so the host can queue steps ahead of the device.
timeout 45 "$PY" - "$OUT/host_syncs_gpu.json" <<'PY' || status_train=$?
import json, sys, tempfile, warnings
from pathlib import Path
import torch
from decaylab.config import load_config
from decaylab.training import Trainer
cuda = torch.cuda.is_available()
cfg = load_config(None, ["data.name=bible-en-es", "data.max_examples=400", "model.preset=small",
                         "tokenizer.vocab_size=2000", f"train.device={'cuda' if cuda else 'cpu'}"])
trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run", quiet=True)
batches = [trainer.train_data.batch(group) for group in trainer._epoch_groups(0)]
trainer._train_step(batches[0].to(trainer.device)).tolist()  # warm-up, then the device is idle
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    losses = trainer._train_step(batches[1].to(trainer.device))
    if cuda:
        torch.cuda.set_sync_debug_mode(0)
losses.tolist()
sites = [f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0][:120]}" for w in caught]
Path(sys.argv[1]).write_text(json.dumps({"syncs_per_trainer_step": len(sites), "sites": sites}, indent=2))
print(f"host syncs in one Trainer step: {len(sites)}", *sites, sep="\n  ")
PY

# 2. Training throughput: a bigger model and batch than the CPU run (the small one is launch-bound), no
#    torch.compile row (its compile time alone would eat the budget), no CPU op profile.
timeout "${TRAIN_TIMEOUT:-120}" "$PY" benchmarks/train_throughput.py --device cuda --quick --preset base \
    --batch-tokens 8192 --rows baseline,ours,ours_bf16,ours_gru --reps 3 --rep-batches 4 --no-profile \
    --out "$OUT/train_throughput_gpu.json"
status_train=$?

# 3b. K = 8 stacked Transformers (encoder-decoder and decoder LM) against 8 sequential runs (issue 13: >= 4x on a GPU).
timeout "${VT_TIMEOUT:-60}" "$PY" benchmarks/vectorized_transformer.py --device cuda \
    --out "$OUT/vectorized_transformer_gpu.json" || status_lm=$?

# 3. The decoder-only LM against the nanoGPT-style loop, GPT-2 small's shape (the `base` preset), block 512.
status_lm=${status_lm:-0}
timeout "${LM_TIMEOUT:-100}" "$PY" benchmarks/lm_throughput.py --device cuda --quick --preset base --block 512 \
    --batch 16 --vocab 8000 --bf16 yes --out "$OUT/lm_throughput_gpu.json" || status_lm=$?

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
lm = out / "lm_throughput_gpu.json"
if lm.is_file():
    r = json.loads(lm.read_text())
    for name, row in r["rows"].items():
        ratio = f"  {row['ratio_to_baseline']:.2f}x nanoGPT-style" if "ratio_to_baseline" in row else ""
        print(f"  LM {name:<14} {row['tokens_per_s']:>10.0f} tok/s  MFU {row['mfu']:6.1%}{ratio}")
vec = out / "vectorized_sweep_gpu.json"
if vec.is_file():
    v = json.loads(vec.read_text())
    for row in v["sizes"]:
        print(f"vectorized K={row['k']} {row['preset']}: sequential {row['baseline_s']} s, stacked {row['ours_s']} s, "
              f"ratio {row['ratio']}x, max |dval| {row['max_abs_val_loss_difference']:.1e}")
PY
echo "gpu_check: vectorized_sweep exit $status_vec, train_throughput exit $status_train, lm_throughput exit" \
    "$status_lm, $(( $(date +%s) - started )) s"
[ "$status_train" = 0 ] && [ "$status_vec" = 0 ] && [ "$status_lm" = 0 ]
