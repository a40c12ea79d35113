"""Several processes for one training job: `train.devices`, torchrun and DDP.

`train.devices: N > 1` makes `seqsetvae train` start N copies of itself with PyTorch's
own launcher (`torch.distributed.run`, standalone rendezvous on this node), one per
device: NCCL and one GPU per process on CUDA, gloo on the CPU. `batch_size` stays the
global batch, so a batch size means the same on any number of devices:

- every rank draws the same global batch from the one sampler (same seed, same state)
  and takes its part of it (`split_batch`: balanced by events, deterministic);
- the loss is normalised by the global batch's counts (patients, real sets), known on
  every rank from the shard index, and scaled by the world size, so that DDP's mean of
  the ranks' gradients is the gradient of the global batch's loss;
- the posterior's sampling noise is drawn for the whole global batch on every rank (the
  ranks' random streams stay in step) and each rank takes its sets' rows, so that a step
  on N ranks is the step of one process on the same global batch (dropout masks are
  drawn per rank: with dropout > 0 the runs agree in distribution, not bit for bit);
- rank 0 validates, measures the noise scale, writes checkpoints, metrics and outputs;
  every rank's random state is in the checkpoint, so a killed job resumes exactly.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from seqsetvae.data.ragged import exclusive_cumsum, ranges
from seqsetvae.errors import InputError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """Whether this process is one of torchrun's workers."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_devices(devices: int, batch_sizes: list[int], max_events_per_batch) -> None:
    """A global batch that the world size cannot split into non-empty parts."""
    if devices > 1 and min(batch_sizes) < devices:
        raise InputError(
            f"configuration keys train.devices = {devices} and train.batch_sizes: batch size {min(batch_sizes)} "
            f"cannot be split across {devices} devices (each device needs at least one patient of every "
            "batch); use batch sizes of at least train.devices, or fewer devices"
        )
    if devices > 1 and max_events_per_batch is not None:
        raise InputError(
            "configuration keys train.devices and train.max_events_per_batch: a token budget makes batches of a "
            "single long patient, which several devices cannot share; use one of the two"
        )


def launch(argv: list[str], devices: int) -> int:
    """Run `seqsetvae train argv` in `devices` processes; the exit status of the job."""
    from torch.distributed.run import main as torchrun

    command = [
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(devices),
        "--no-python",
        sys.executable,
        "-m",
        "seqsetvae.cli",
        "train",
        *argv,
    ]
    try:
        torchrun(command)
    except Exception as error:  # ChildFailedError: the workers' own messages are in the log above
        print(f"error: training in {devices} processes failed ({type(error).__name__})", file=sys.stderr)
        return 1
    return 0


def init(device_type: str) -> World:
    """Join the process group torchrun set up (a single process: World())."""
    if not launched():
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return world


def split_batch(events: np.ndarray, world: int) -> list[np.ndarray]:
    """Positions into a global batch for each rank, balanced by events.

    Patients sorted by events (longest first, ties by position) are dealt to the ranks
    in a snake order (0, 1, ..., N-1, N-1, ..., 0, ...), so the ranks' event totals
    differ by at most about one patient's; each part keeps the batch's order.
    """
    order = np.lexsort((np.arange(len(events)), -np.asarray(events)))
    turn = np.arange(len(order))
    rank = np.where((turn // world) % 2 == 0, turn % world, world - 1 - turn % world)
    return [np.sort(order[rank == r]) for r in range(world)]


def rank_share(indices: np.ndarray, n_events: np.ndarray, world: World) -> tuple[np.ndarray, float]:
    """This rank's positions in the global batch `indices` and its share of the loss: 0
    for a rank left without a patient (the epoch's last, short batch), which then
    computes one patient's loss times 0, so that it takes part in the all-reduce."""
    mine = split_batch(n_events[indices], world.size)[world.rank]
    return (mine, 1.0) if len(mine) else (np.zeros(1, dtype=np.int64), 0.0)


def rank_noise(
    indices: np.ndarray, mine: np.ndarray, n_sets: np.ndarray, latent_dim: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """This rank's sets' rows [S_rank, latent_dim] of the posterior noise of the global
    batch, which every rank draws whole (so their random streams stay in step)."""
    sets = n_sets[indices]
    noise = torch.randn((int(sets.sum()), latent_dim), dtype=dtype, device=device)  # [S_global, d]
    rows = ranges(exclusive_cumsum(sets)[:-1][mine], sets[mine])
    return noise[torch.as_tensor(rows, device=device)]


def backward_global(
    output, weights, batch, size: dict, share: float, world: World, device: torch.device, penalty: torch.Tensor | float
) -> tuple[dict, float]:
    """Backward of this rank's part of the global batch's mean loss, times the world size
    (DDP averages the ranks' gradients, so their mean is the global batch's gradient);
    `penalty` (the wide path's L2 term, the same on every rank) joins unscaled, so the mean
    counts it once. Returns the global batch's loss terms and its sequence-grid slots (one
    all-reduce)."""
    ce_sum, recon_sum, kl_sum = (x.sum() for x in (output.ce_per_patient, output.recon_per_set, output.kl_per_set))
    loss = weights.pred * ce_sum / size["patients"] + (weights.recon * recon_sum + weights.beta * kl_sum) / size["sets"]
    (loss * (share * world.size) + weights.pred * penalty).backward()
    local = [share * float(x.detach()) for x in (ce_sum, recon_sum, kl_sum)]
    ce, recon, kl, slots = all_sum([*local, share * batch.sequence_mask.numel()], device)
    ce, recon, kl = ce / size["patients"], recon / size["sets"], kl / size["sets"]
    prediction = ce + float(penalty)
    terms = {
        "loss": weights.pred * prediction + weights.recon * recon + weights.beta * kl,
        "recon": recon,
        "kl": kl,
        "ce": ce,
    }
    return terms, slots


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums over the ranks of a few numbers (one all-reduce)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_max(values: list[float], device: torch.device) -> list[float]:
    """Maxima over the ranks of a few numbers (one all-reduce)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def gather_rng(device: torch.device) -> list[dict]:
    """Every rank's torch (and CUDA) random state, on every rank."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    out = []
    for name, state in states.items():
        local = state.to(device) if device.type == "cuda" else state
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        out.append((name, [p.cpu() for p in parts]))
    return [{name: parts[r] for name, parts in out} for r in range(dist.get_world_size())]


def set_rank_rng(states: list[dict], world: World, device: torch.device) -> None:
    mine = states[world.rank]
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def place(device: torch.device, threads: int, world: World) -> tuple[torch.device, int]:
    """This process's device and CPU threads: on CUDA its rank's GPU; on a CPU the job's
    threads shared between its processes."""
    if not world.distributed:
        return device, threads
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        return device, threads
    return device, max(1, threads // world.size)
