#!/usr/bin/env bash
# The GPU check of the training step (issue: an accelerator-ready step), a few minutes on
# one GPU: `seqsetvae bench train` at batch sizes 1, 4, 16 and 64 in fp32 (TF32 matmuls)
# and bf16 with the compiled step (train.compile auto: CUDA graphs, bucketed batches),
# one whole step under torch.cuda.set_sync_debug_mode("error"), and the eager fp32 step
# at batch sizes 1 and 16 for comparison. The first compiled process compiles (a minute
# or two); the others find its kernels in inductor's on-disk cache.
# Prints and writes patients/s, kernels per step, host syncs, recompiles, CUDA peak memory.
#   bash scripts/gpu_bench.sh [OUT_DIR]       (default: work/gpu_bench)
set -euo pipefail
out=${1:-work/gpu_bench}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for precision in fp32 bf16; do
    seqsetvae bench train --device cuda --precision "$precision" --batch-sizes 1 4 16 64 \
        --patients 256 --warmup 5 --threads 8 --sync-check --json "$out/bench_$precision.json" \
        | tee "$out/bench_$precision.txt"
done
seqsetvae bench train --device cuda --precision fp32 --compile false --batch-sizes 1 16 \
    --patients 256 --warmup 3 --threads 8 --json "$out/bench_fp32_eager.json" | tee "$out/bench_fp32_eager.txt"
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("fp32", "bf16", "fp32_eager"):
    for r in json.load(open(f"{out}/bench_{name}.json"))["results"]:
        print(f"{name:>10} batch {r['batch_size']:>3}: {r['patients_per_s']:8.1f} patients/s, "
              f"{r['kernels_per_step']} kernels, {r['host_syncs_per_step']} syncs, recompiles {r['recompiles']}, "
              f"sync check {r['sync_check']}, CUDA peak {r['cuda_max_allocated_mb']:.0f} MiB")
PY
