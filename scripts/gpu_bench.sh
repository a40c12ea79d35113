#!/usr/bin/env bash
# The GPU check of the training step, sized for a 15-minute device lease: `seqsetvae bench
# train` on one GPU with CONFIG's model and training settings (default config.yaml, the
# recipe the pipeline trains; an empty file gives the schema's, docs/model.md's model):
#   1. the eager fp32 step (TF32 matmuls; train.compile false, the default) at batch sizes
#      1, 4, 16 and 64, with one whole step under torch.cuda.set_sync_debug_mode("error");
#   2. the same under bf16 autocast at batch sizes 1, 16 and 64;
#   3. the compiled step (train.compile true: CUDA graphs, bucketed batches) in fp32 at
#      batch sizes 1 and 16, last, as it compiles for minutes.
# Prints and writes patients/s, kernels per step, host syncs, recompiles, CUDA peak memory.
#   bash scripts/gpu_bench.sh [OUT_DIR] [CONFIG]     (defaults: work/gpu_bench, config.yaml)
set -euo pipefail
out=${1:-work/gpu_bench}
config=${2:-config.yaml}
mkdir -p "$out"
settings=$(python3 -c "import json, sys, yaml; c = yaml.safe_load(open(sys.argv[1])) or {}; print(json.dumps({k: c[k] for k in ('model', 'train') if k in c}))" "$config")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
bench() {  # name, then bench train's arguments
    local name=$1
    shift
    seqsetvae bench train --device cuda --patients 256 --threads 8 --settings "$settings" \
        --json "$out/bench_$name.json" "$@" | tee "$out/bench_$name.txt"
}
bench fp32 --precision fp32 --compile false --batch-sizes 1 4 16 64 --warmup 3 --sync-check
bench bf16 --precision bf16 --compile false --batch-sizes 1 16 64 --warmup 3
bench fp32_compiled --precision fp32 --compile true --batch-sizes 1 16 --warmup 5
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("fp32", "bf16", "fp32_compiled"):
    for r in json.load(open(f"{out}/bench_{name}.json"))["results"]:
        print(f"{name:>13} batch {r['batch_size']:>3}: {r['patients_per_s']:8.1f} patients/s, "
              f"{r['kernels_per_step']} kernels, {r['host_syncs_per_step']} syncs, recompiles {r['recompiles']}, "
              f"sync check {r['sync_check']}, CUDA peak {r['cuda_max_allocated_mb']:.0f} MiB")
PY
