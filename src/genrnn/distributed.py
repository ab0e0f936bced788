"""Data-parallel training with PyTorch's own engine (DDP), started by torchrun::

    torchrun --nproc-per-node 4 -m genrnn train CORPUS [options]

Every process builds the same dataset and draws the same *global* batch
(``--batch-size`` rows; the data order is a pure function of seed, epoch and
step), then trains on its own contiguous slice of the rows. DDP averages the
gradients, so a step equals a single-process step on the whole batch, up to
float summation order. One small all-reduce per step shares rank 0's clock
(a time-budgeted learning-rate schedule must be the same everywhere) and any
rank's Ctrl-C. Validation splits the evaluation lanes across ranks and sums
nats and targets. Only rank 0 prints, samples and writes the run folder.

Backends: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the
CPU (the tests run two gloo processes on one machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Tuple

import torch
import torch.distributed as dist

from .errors import GenrnnError


@dataclass(frozen=True)
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: int) -> slice:
        """This rank's contiguous slice of a global batch of ``rows``."""
        per = rows // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    # -- collectives (no-ops in a single process) ------------------------------

    def sync_step(self, elapsed: float, stop: bool, device: torch.device) -> Tuple[float, bool]:
        """Rank 0's elapsed time, and whether any rank asked to stop."""
        if not self.enabled:
            return elapsed, stop
        t = torch.tensor([elapsed if self.is_main else 0.0, float(stop)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t[0]), bool(t[1] > 0)

    def sum(self, values: List[float], device: torch.device) -> List[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> List[Any]:
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_env() -> Dist:
    """The process group torchrun describes in the environment (WORLD_SIZE,
    RANK, LOCAL_RANK); a plain single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(world_size=world, rank=int(os.environ.get("RANK", "0")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def init(d: Dist, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device."""
    if not d.enabled:
        return device
    if device.type == "cuda":
        if torch.cuda.device_count() < d.local_world_size:
            raise GenrnnError(f"{d.local_world_size} processes per node but only {torch.cuda.device_count()} "
                              "CUDA devices; use --nproc-per-node <= the number of GPUs")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise GenrnnError(f"distributed training supports cuda and cpu, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
