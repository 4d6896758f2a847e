"""Where training runs: one process, or a data-parallel group under ``torchrun`` (DDP or FSDP2).

``train.strategy``: ``auto`` (DDP under torchrun, one process otherwise), ``single``, ``ddp``
(``DistributedDataParallel``: bucketed gradient all-reduce overlapping the backward pass) or
``fsdp`` (``torch.distributed.fsdp.fully_shard``: parameters, gradients and optimizer state
sharded; each copy of a ``repeat`` block is its own unit unless it shares tensors with the rest).
gloo on CPU, nccl on GPU.

Every process walks the same seeded batch order and takes its share of each global batch the way
``DistributedSampler`` splits a dataset: the batch is padded by repeating its first samples to a
multiple of the world size, and process ``r`` takes samples ``r, r + R, ...``. No share is ever
empty, every share has the same size, so averaged gradients are the mean over the global batch:
with a batch the world size divides, training matches one process to float rounding. Batch
norms synchronise their statistics across processes (``runner.train.syncbn``). Each process
seeds its global RNG with ``seed + rank``, so dropout draws differ between processes and repeat
from run to run. Only rank 0 logs and writes checkpoints; collective work (statistics of sharded
tensors, gathering full weights) runs on every rank.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn


class Strategy:
    """One process (the base class does everything a data-parallel group adds nothing to)."""

    name = "single"
    rank = 0
    world = 1
    owns_group = False

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, net: nn.Module, cfg) -> nn.Module:
        """Place ``net`` (synchronised batch norms, wrappers); returns the module to train through."""
        return net

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world == 1:
            return x, y
        per = -(-len(x) // self.world)
        sel = (torch.arange(per * self.world) % len(x))[self.rank::self.world]
        return x[sel], y[sel]

    def grad_sync(self, model: nn.Module, sync: bool):
        """A context in which backward does (or, for accumulation, does not yet) synchronise."""
        return contextlib.nullcontext()

    def reduce_max_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def reduce_mean_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def reduce_sum_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def seed(self, seed: int) -> int:
        return seed + self.rank

    def gather(self, obj: Any) -> list:
        """``obj`` of every rank, in rank order (on every rank)."""
        return [obj]

    def full_tensors(self, net) -> dict[str, torch.Tensor]:
        """Every tensor a checkpoint holds, by canonical name, whole (collective under FSDP)."""
        return {k: t.detach() for k, t in net.tensors().items()}

    def optimizer_state(self, net, opt) -> dict:
        return opt.state_dict()

    def load_optimizer_state(self, net, opt, state: dict) -> None:
        opt.load_state_dict(state)

    def sharded(self) -> bool:
        """Whether parameters are sharded (statistics then reduce across processes)."""
        return False

    def after_eval(self, net) -> None:
        """After a forward pass without backward (validation)."""

    def close(self, ok: bool = True) -> None:
        pass


class _Group(Strategy):
    """A process in a torchrun group."""

    def __init__(self, device: torch.device, owns_group: bool):
        import torch.distributed as dist

        super().__init__(device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.owns_group = owns_group
        self.backend = dist.get_backend()

    def setup(self, net, cfg):
        from runner.train.syncbn import sync_batchnorm

        if cfg.sync_batchnorm:
            sync_batchnorm(net)
        return net

    def _reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(t, op=op)
        return t

    def reduce_max_(self, t):
        import torch.distributed as dist

        return self._reduce(t, dist.ReduceOp.MAX)

    def reduce_sum_(self, t):
        import torch.distributed as dist

        return self._reduce(t, dist.ReduceOp.SUM)

    def reduce_mean_(self, t):
        return self.reduce_sum_(t).div_(self.world)

    def gather(self, obj):
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self, ok: bool = True) -> None:
        """Tear down the process group this process joined. Gloo's worker threads left to
        interpreter finalization can abort the process, so this runs before returning; after a
        success every rank first waits for the others (a failed rank would not come)."""
        import gc

        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            if ok:
                dist.barrier()
            # the DDP wrapper sits in reference cycles, and its reducer holds the last all-reduces'
            # work objects: freed only at interpreter teardown, they can abort the process too
            self.__dict__.pop("ddp", None)
            gc.collect()
            dist.destroy_process_group()


class DDP(_Group):
    name = "ddp"

    def setup(self, net, cfg):
        from torch.nn.parallel import DistributedDataParallel

        super().setup(net, cfg)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(net, device_ids=ids)
        return self.ddp

    def grad_sync(self, model, sync):
        return contextlib.nullcontext() if sync else self.ddp.no_sync()


class FSDP(_Group):
    name = "fsdp"

    def setup(self, net, cfg):
        from torch.distributed.fsdp import fully_shard

        super().setup(net, cfg)
        for unit in shard_units(net):
            fully_shard(net.module(unit))
        fully_shard(net)
        self.net = net
        return net

    def grad_sync(self, model, sync):
        self.net.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def sharded(self) -> bool:
        return True

    def after_eval(self, net) -> None:
        # the root unit stays unsharded after a forward pass that no backward follows: shard it
        # again, so the parameters are the sharded ones the optimizer holds
        net.reshard()

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def full_tensors(self, net):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(net, options=self._options(cpu_offload=True))
        return {name: full[name] for name in net.tensors()} if self.is_main else {}

    def optimizer_state(self, net, opt):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return {"fsdp_full": get_optimizer_state_dict(net, opt, options=self._options(cpu_offload=True))}

    def load_optimizer_state(self, net, opt, state):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        from runner.checkpoint.weights import CheckpointError

        if "fsdp_full" not in state:
            raise CheckpointError("this checkpoint's optimizer state was written without FSDP; resume it with "
                                  "the train.strategy it was written with")
        set_optimizer_state_dict(net, opt, state["fsdp_full"] if self.is_main else {},
                                 options=self._options(broadcast_from_rank0=True))


def shard_units(net) -> list[str]:
    """Modules that can be FSDP units of their own: copies made by ``repeat`` (or items of a
    ModuleList), outermost first, that share no tensor with anything outside them (tied tensors
    must live in one unit)."""
    aliases = net.param_aliases()
    units: list[str] = []
    for name, info in net.infos.items():
        if not name or info.copy_index is None or info.reuse_of or any(name.startswith(u + ".") for u in units):
            continue
        inside = lambda n: n.startswith(name + ".")  # noqa: E731
        if any(inside(a) != inside(c) for a, c in aliases.items()):
            continue
        if any(inside(a) != inside(c) for a, c in net.transposed_aliases.items()):
            continue
        if any(True for _ in net.module(name).parameters()):
            units.append(name)
    return units


def from_config(cfg, device: torch.device) -> Strategy:
    """The strategy ``train.strategy`` asks for, joining torchrun's process group if there is one."""
    from runner.errors import UserError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    name = cfg.strategy
    if world <= 1:
        if name in ("ddp", "fsdp"):
            raise UserError(f"train.strategy: {name} needs several processes; launch with torchrun "
                            "--nproc_per_node=N (or use single)")
        return Strategy(device)
    if name == "single":
        raise UserError(f"train.strategy: single, but torchrun started {world} processes; use ddp or fsdp")
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return (FSDP if name == "fsdp" else DDP)(device, owns)
