"""`seqsetvae bench train`: training throughput, memory and FLOP/s per batch size.

    seqsetvae bench train [--batch-sizes 1 4 8 16] [--patients 64] [--epochs 1] [--warmup 2]
                          [--mean-sets 110] [--mean-events 300] [--settings JSON]
                          [--threads 2] [--device cpu|cuda] [--precision fp32|bf16]
                          [--compile auto|true|false]

Each batch size runs in a fresh subprocess (so the peak RSS is that batch size's own) on
in-memory synthetic patients (by default about 110 sets and 300 events per patient, the
schema's synthetic cohort; `--mean-sets 40 --mean-events 120` is `config.yaml`'s), 40
variables, a 768-wide embedding, with the model of `--settings` (default: the schema's). Every
batch size trains on the same patients (whole epochs of the length-grouped sampler), so
the comparison is not skewed by which patients a few sampled steps happen to hold. A step
is what training does: gather the length-grouped batch, collate, forward, backward,
clip, AdamW. Printed per batch size: patients/s and events/s over the timed epochs, fill
ratios, peak memory, and the achieved model FLOP/s (FLOPs of one step counted with
`torch.utils.flop_counter.FlopCounterMode`, scaled per event to the timed steps) next to
the FLOP/s of a plain matmul measured in the same process, i.e. the fraction of what
this machine reaches on dense math; and, from one profiled forward + backward, the
host-device synchronisations (`host_syncs_per_step`), the launched CUDA kernels
(`kernels_per_step`) or top-level aten ops on the CPU (`ops_per_step`), and the share of
step time spent building the batch (`data_wait_fraction`). With a compiled step
(`--compile`, default `train.compile` of the settings: on for CUDA), batches are padded
to buckets as training pads them for CUDA graphs, the warm-up steps compile, and
`recompiles` counts the graphs built during the timed epochs (the target is 0); the
FLOPs are counted on one eager step before compiling (the counter does not see inside
compiled graphs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqsetvae bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs over the patients, per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--patients", type=int, default=64, help="synthetic patients; every batch size trains on exactly these"
    )
    parser.add_argument("--mean-sets", type=float, default=110.0, help="average sets per patient")
    parser.add_argument("--mean-events", type=float, default=300.0, help="average events per patient")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--settings", default="{}", help="JSON with model/train sections (defaults: the schema's)")
    parser.add_argument(
        "--compile", choices=["auto", "true", "false"], help="train.compile for this benchmark (default: the settings')"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--sync-check",
        action="store_true",
        help="CUDA: run one whole step under torch.cuda.set_sync_debug_mode('error')",
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one batch size, in-process
    return parser


def matmul_flops_per_s(device, dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a plain square matmul on this device and thread count."""
    import torch

    n = 1024 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        sync()
    return 2 * n**3 * runs / (time.perf_counter() - start)


def count_syncs_and_ops(forward_backward, batch, device) -> tuple[int, int]:
    """(host-device synchronisations, launched kernels on CUDA or top-level aten ops on
    CPU) of one forward + backward, counted with the torch profiler. A sync is an
    `aten::_local_scalar_dense` event (`.item()`, `int(tensor)`, a data-dependent shape)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        forward_backward(batch)
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
    events = prof.events()
    syncs = sum(1 for e in events if e.name == "aten::_local_scalar_dense")
    if device.type == "cuda":
        ops = sum(1 for e in events if e.device_type.name == "CUDA")
    else:
        ops = sum(
            1
            for e in events
            if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        )
    return syncs, ops


def worker(args) -> dict:
    """Benchmark one batch size in this process; returns its numbers."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from seqsetvae.batching import collate, random_patients
    from seqsetvae.model import LossWeights, ModelConfig, SeqSetVAE
    from seqsetvae.runtime.device import compiled_graphs, compiled_step
    from seqsetvae.runtime.memory import cuda_peaks_mb, peak_rss_mb
    from seqsetvae.runtime.sampler import LengthGroupedBatchSampler
    from seqsetvae.settings import load_settings
    from seqsetvae.training.optimizer import build_optimizer
    from seqsetvae.training.step import train_step

    batch_size = args.worker
    settings = json.loads(args.settings)
    if args.compile is not None:
        settings.setdefault("train", {})["compile"] = {"true": True, "false": False}.get(args.compile, args.compile)
    settings = load_settings(settings)
    train = settings["train"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    # the default shape keeps 40 variables and sets of at most 15; large mean sets (lab
    # panels, ventilator settings: 30-60 values at one time) get room for them
    room = int(-(-3 * args.mean_events // args.mean_sets))
    vocab, cap = max(40, room), max(15, room)
    patients = random_patients(
        args.patients,
        mean_sets=args.mean_sets,
        mean_events=args.mean_events,
        vocab_size=vocab,
        max_set_size=cap,
        seed=0,
    )
    embedding = torch.randn(vocab, 768, generator=torch.Generator().manual_seed(0))
    model = SeqSetVAE(ModelConfig.from_settings(settings["model"]), embedding).to(device)
    optimizer = build_optimizer(model, train, train["lr"])
    weights = LossWeights.at_evaluation(settings["model"])  # every term active, as in most of a run
    sampler = LengthGroupedBatchSampler(
        patients.events_per_patient(),
        batch_size,
        mega_batch_factor=train["mega_batch_factor"],
        max_events_per_batch=train["max_events_per_batch"],
        seed=0,
    )
    warmup_batches = (b for epoch in range(10**6) for b in sampler.batches(epoch))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    data_seconds = [0.0]

    def forward_backward(batch):  # what the profiler counts (count_syncs_and_ops)
        with autocast:
            out = model(batch, weights)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()

    pin = device.type == "cuda"
    mode = compiled_step(train["compile"], device)
    pad = mode == "reduce-overhead"  # CUDA graphs: bucketed shapes, as training pads them

    def step(indices, index: int):
        start = time.perf_counter()
        batch = collate(patients.take(indices), pad=pad)
        batch = (batch.pin_memory() if pin else batch).to(device, non_blocking=pin)
        data_seconds[0] += time.perf_counter() - start  # on the critical path: no loader overlaps it
        train_step(model, model, optimizer, batch, weights, lambda: autocast, train["grad_clip"])
        sync()
        return batch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as training does (seqsetvae.runtime.device.resolve_device)
        torch.backends.cudnn.allow_tf32 = True
    # FLOPs of one eager step, per event (applied to the timed events below)
    with FlopCounterMode(display=False) as counter:
        batch = step(next(warmup_batches), 0)
    flops_per_event = counter.get_total_flops() / batch.n_events
    if mode is not None:
        model.compile_step(mode)
    for i in range(args.warmup):
        step(next(warmup_batches), i)
    sync_check = None
    if args.sync_check and device.type == "cuda":
        # a synchronising call in the step (a .item(), a data-dependent shape, a pageable
        # copy) raises here instead of silently stalling the GPU queue
        torch.cuda.set_sync_debug_mode("error")
        try:
            batch = collate(patients.take(next(warmup_batches)), pad=pad).pin_memory().to(device, non_blocking=True)
            train_step(model, model, optimizer, batch, weights, lambda: autocast, train["grad_clip"])
            sync_check = "passed"
        except RuntimeError as error:
            sync_check = f"failed: {str(error).splitlines()[0][:200]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # whole epochs over the same patients for every batch size: a sample of a few steps
    # would compare batch sizes on patients of different lengths
    timed = [b for epoch in range(args.epochs) for b in sampler.batches(10**6 + epoch)]
    data_seconds[0] = 0.0
    graphs_before = compiled_graphs() if mode is not None else 0
    seconds = patients_done = events_done = sets_done = slots = seq_slots = 0
    for i, indices in enumerate(timed):
        start = time.perf_counter()
        batch = step(indices, args.warmup + i)
        seconds += time.perf_counter() - start
        patients_done += batch.n_patients
        events_done += batch.n_events
        sets_done += batch.n_sets
        slots += batch.n_events / batch.fill_ratio
        seq_slots += batch.sequence_mask.numel()
    recompiles = compiled_graphs() - graphs_before if mode is not None else None
    cuda_allocated, cuda_reserved = cuda_peaks_mb(device)
    rss = peak_rss_mb()
    data_wait = data_seconds[0] / seconds
    syncs, ops = count_syncs_and_ops(forward_backward, collate(patients.take(timed[0]), pad=pad).to(device), device)
    model_flops = flops_per_event * events_done / seconds
    matmul = matmul_flops_per_s(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    return {
        "batch_size": batch_size,
        "steps": len(timed),
        "mean_set_size": events_done / sets_done,
        "patients_per_s": patients_done / seconds,
        "events_per_s": events_done / seconds,
        "seconds_per_step": seconds / len(timed),
        "fill_ratio": events_done / slots,
        "sequence_fill_ratio": sets_done / seq_slots,
        "peak_rss_mb": rss,
        "cuda_max_allocated_mb": cuda_allocated,
        "cuda_max_reserved_mb": cuda_reserved,
        "flops_per_patient": flops_per_event * events_done / patients_done,
        "model_flops_per_s": model_flops,
        "matmul_flops_per_s": matmul,
        "fraction_of_matmul": model_flops / matmul,
        "host_syncs_per_step": syncs,  # aten::_local_scalar_dense in forward + backward
        "data_wait_fraction": data_wait,  # batch gathering, collate and copy: share of step time
        "kernels_per_step" if device.type == "cuda" else "ops_per_step": ops,
        "compile": mode,  # None: eager
        "compiled_graphs": compiled_graphs() if mode is not None else None,
        "recompiles": recompiles,  # graphs built during the timed epochs (after warm-up)
        "sync_check": sync_check,
        "device": device.type,
        "threads": args.threads,
        "precision": args.precision,
        "torch_version": torch.__version__,
    }


def _table(results: list[dict]) -> str:
    cuda = any(r["cuda_max_allocated_mb"] is not None for r in results)
    head = ["batch", "patients/s", "events/s", "s/step", "fill", "seq fill", "peak RSS MiB"]
    head += ["CUDA alloc MiB", "CUDA reserved MiB"] if cuda else []
    head += [
        "model GFLOP/s",
        "matmul GFLOP/s",
        "of matmul",
        "syncs",
        "ops" if not cuda else "kernels",
        "data wait",
        "recompiles",
    ]
    rows = []
    for r in results:
        row = [
            str(r["batch_size"]),
            f"{r['patients_per_s']:.2f}",
            f"{r['events_per_s']:.0f}",
            f"{r['seconds_per_step']:.3f}",
            f"{r['fill_ratio']:.3f}",
            f"{r['sequence_fill_ratio']:.3f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        if cuda:
            row += [f"{r['cuda_max_allocated_mb']:.0f}", f"{r['cuda_max_reserved_mb']:.0f}"]
        row += [
            f"{r['model_flops_per_s'] / 1e9:.2f}",
            f"{r['matmul_flops_per_s'] / 1e9:.1f}",
            f"{100 * r['fraction_of_matmul']:.1f}%",
            str(r["host_syncs_per_step"]),
            str(r.get("kernels_per_step", r.get("ops_per_step"))),
            f"{100 * r['data_wait_fraction']:.1f}%",
            "-" if r["recompiles"] is None else str(r["recompiles"]),
        ]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return 0
    results = []
    for batch_size in args.batch_sizes:
        command = [sys.executable, "-m", "seqsetvae.benchmarks.train", "--worker", str(batch_size)]
        for name in (
            "epochs",
            "warmup",
            "patients",
            "mean_sets",
            "mean_events",
            "threads",
            "device",
            "precision",
            "settings",
            "compile",
        ):
            if getattr(args, name) is not None:
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        command += ["--sync-check"] if args.sync_check else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"batch size {batch_size}: {results[-1]['patients_per_s']:.2f} patients/s", file=sys.stderr, flush=True)
    first = results[0]
    print(
        f"bench train: {args.epochs} timed epoch(s) over the same {args.patients} patients after "
        f"{args.warmup} warm-up steps per batch size, "
        f"{first['device']}, {args.threads} threads, {args.precision}, torch {first['torch_version']}, "
        f"step {'compiled (' + first['compile'] + ')' if first['compile'] else 'eager'}"
    )
    print(_table(results))
    by_size = {r["batch_size"]: r for r in results}
    if 1 in by_size and 16 in by_size:
        speedup = by_size[16]["patients_per_s"] / by_size[1]["patients_per_s"]
        print(
            f"batch 16 vs 1: {speedup:.2f}x patients/s (target >= 1.0); batch 16: "
            f"{by_size[16]['patients_per_s']:.2f} patients/s (CPU target >= 4)"
        )
    if args.json:
        from seqsetvae.io import write_json

        write_json(args.json, {"results": results, "arguments": {k: v for k, v in vars(args).items() if k != "worker"}})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
