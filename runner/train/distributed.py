"""Data-parallel training under ``torchrun`` (gloo on CPU, nccl on GPU).

Every process builds the same model (initial values come from per-name seeded streams, and are
broadcast from rank 0 anyway), walks the same seeded batch order, and takes its share of each
global batch. Each share's mean loss is weighted by its size, so after the gradients are summed
across processes they are exactly the gradient of the whole batch's mean loss: training matches
one process on the same global batch (up to float summation order). Only rank 0 logs and
checkpoints; the statistics it logs describe the synchronized gradients.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int
    world: int
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[self.rank::self.world], y[self.rank::self.world]

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors across processes in place, as one flat buffer (one collective call)."""
        import torch.distributed as dist

        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def close(self) -> None:
        """Tear down the process group this process joined. Gloo's worker threads left to
        interpreter finalization can abort the process, so this runs before returning."""
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        import torch.distributed as dist

        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)


def from_environment() -> Dist | None:
    """Join the process group torchrun set up, or None when running alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), owns)
