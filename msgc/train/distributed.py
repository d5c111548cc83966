"""Multi-process training with torch.distributed: the process group, wrappers and reductions.

``Parallel`` is what the trainer asks about the processes it runs in. One process
(``Parallel.single()``) is the plain runtime: every reduction returns its input, the model is
its own wrapper. Under torchrun (``Parallel.from_env("ddp" | "fsdp", device)``):

Process group
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous come from torchrun's
    environment; the backend is nccl on CUDA (device ``cuda:LOCAL_RANK``) and gloo on the CPU.

Data and loss
    ``batch_size`` is the global batch; rank ``r`` trains on its contiguous block of rows
    (``BatchSampler(rank, world_size)``). DDP and FSDP average the ranks' gradients, so each
    rank's loss is its *summed* loss times ``sum_scale = W / N`` (``N`` scored targets on all
    ranks, one all-reduce per micro-batch). The averaged gradient is then the gradient of the
    global batch's mean loss, for causal LM (equal counts per rank) and MLM (the number of
    masked tokens differs per rank) alike, and a rank with no scored target adds zero.

DDP
    ``wrap(model)`` is ``DistributedDataParallel(model)`` (buffers, the masks among them, are
    not broadcast: every rank sets them the same way). The trainer keeps the unwrapped model
    and re-wraps it whenever it changes (growth, fold).

FSDP (FSDP2's ``fully_shard`` on the whole model, one parameter group)
    ``shard(model, optimizer)`` shards the model in place (its Parameters become DTensors
    sharded on dim 0) and moves the AdamW state onto the shards. ``gather(model, optimizer,
    structure)`` is the way back: a fresh unsharded model of the same structure (``structure``
    builds it) holding the full tensors, and an AdamW over it holding the full state. Growth,
    fold and checkpoints run on the gathered copy, exactly as in one process; training and
    evaluation run on the sharded model.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from msgc.errors import SpecError
from msgc.train.optim import build_optimizer

__all__ = ["MODES", "Parallel", "rank_seed"]

MODES = ("ddp", "fsdp")
"""The values of ``msgc train --distributed``."""


@dataclass
class Parallel:
    """The processes a run trains in: one (``mode`` None), or a torch.distributed group."""

    mode: str | None = None  # None | "ddp" | "fsdp"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def single(cls) -> Parallel:
        """One process: no group, no wrapper."""
        return cls()

    @classmethod
    def from_env(cls, mode: str, device: torch.device) -> Parallel:
        """Join the process group torchrun describes in the environment (``mode``: ddp/fsdp)."""
        if mode not in MODES:
            raise SpecError(f"--distributed must be one of {MODES}, not {mode!r}")
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise SpecError(f"--distributed {mode} needs the environment torchrun sets (RANK, "
                            "WORLD_SIZE, MASTER_ADDR, ...): launch with torchrun "
                            "--nproc_per_node N -m msgc train ...")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(mode, dist.get_rank(), dist.get_world_size(), local_rank)

    @property
    def distributed(self) -> bool:
        return self.mode is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` under a CUDA group, else `device`."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def close(self) -> None:
        """Leave the process group (a no-op in one process)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def wait_all(self) -> None:
        """Block until every rank gets here (so none tears down gloo while rank 0 writes)."""
        if self.distributed:
            dist.barrier()

    # --- reductions ------------------------------------------------------------------------

    def mean(self, value: float, weight: float = 1.0) -> float:
        """The `weight`-weighted mean of every rank's `value` (`value` itself in one process)."""
        if not self.distributed:
            return value
        totals = torch.tensor([value * weight, weight], dtype=torch.float64)
        dist.all_reduce(totals)
        return float(totals[0] / totals[1])

    def count(self, value: int) -> int:
        """The sum of every rank's `value`."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(total)
        return int(total)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (every rank gets the same answer)."""
        return self.count(int(flag)) > 0

    def sum_scale(self, targets: torch.Tensor, ignore_index: int) -> float:
        """``world_size / N``, N the scored targets of all ranks: times this rank's summed loss,
        the ranks' average is the global batch's mean loss (see the module doc)."""
        local = int((targets != ignore_index).sum())
        return self.world_size / max(self.count(local), 1)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, obj)
        return found

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. fills a cache), the others after it."""
        if self.distributed and not self.is_main:
            dist.barrier()
        yield
        if self.distributed and self.is_main:
            dist.barrier()

    # --- wrappers ----------------------------------------------------------------------------

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to run forward and backward through (DDP around `model` under ddp)."""
        if self.mode != "ddp":
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, **_NO_BUFFER_SYNC)

    @contextmanager
    def gradient_sync(self, wrapper: nn.Module, sync: bool) -> Iterator[None]:
        """Backward inside the block all-reduces gradients only when `sync` (accumulation)."""
        if sync or not self.distributed:
            yield
        elif self.mode == "ddp":
            with wrapper.no_sync():
                yield
        else:
            wrapper.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapper.set_requires_gradient_sync(True)

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp"

    def shard(self, model: nn.Module, optimizer: torch.optim.Optimizer, train,
              device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Under fsdp: `model` sharded in place and an AdamW over its shards with `optimizer`'s
        state sharded the same way; otherwise both unchanged."""
        if not self.sharded:
            return model, optimizer
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        names = {p: name for name, p in model.named_parameters()}
        states = {names[p]: s for p, s in optimizer.state.items()}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        mesh = init_device_mesh(device.type, (self.world_size,))
        fully_shard(model, mesh=mesh)
        sharded = build_optimizer(model, train)
        _copy_group_settings(sharded, groups)
        params = dict(model.named_parameters())
        for name, state in states.items():
            sharded.state[params[name]] = {k: _shard_like(v, params[name]) for k, v in
                                           state.items()}
        return model, sharded

    def gather(self, model: nn.Module, optimizer: torch.optim.Optimizer,
               structure: Callable[[], nn.Module], train,
               ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Under fsdp: an unsharded copy of `model` (built by `structure`, full tensors
        loaded) and an AdamW over it with `optimizer`'s full state; otherwise both unchanged.
        Every rank must call it (it all-gathers)."""
        if not self.sharded:
            return model, optimizer
        plain = structure()
        plain.load_state_dict({k: _full(v) for k, v in model.state_dict().items()})
        names = {p: name for name, p in model.named_parameters()}
        full_optimizer = build_optimizer(plain, train)
        _copy_group_settings(full_optimizer, [
            {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
        params = dict(plain.named_parameters())
        for param, state in optimizer.state.items():
            full_optimizer.state[params[names[param]]] = {k: _full(v) for k, v in state.items()}
        return plain, full_optimizer


# every rank sets the masks (buffers) the same way: no need to broadcast them every forward
_DDP_OPTIONS = inspect.signature(DistributedDataParallel).parameters
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_OPTIONS
                   else {"broadcast_buffers": False})


def rank_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for `rank`'s RNG stream from `step` on (stable across runs)."""
    state = np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def _copy_group_settings(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Give `optimizer`'s groups the settings (lr, weight decay, ...) of `groups`, by name."""
    by_name = {g.get("name"): g for g in groups}
    for group in optimizer.param_groups:
        group.update(by_name.get(group.get("name"), {}))


def _full(value: Any) -> Any:
    """A DTensor's full tensor (an all-gather); anything else as it is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def _shard_like(value: Any, param: nn.Parameter) -> Any:
    """An optimizer state entry shaped like `param`'s full tensor, sharded as `param` is."""
    from torch.distributed.tensor import distribute_tensor

    if isinstance(value, torch.Tensor) and value.ndim and value.shape == param.shape:
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value.clone() if isinstance(value, torch.Tensor) else value
