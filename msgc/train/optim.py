"""AdamW across growth: weight-decay groups, the learning-rate schedule, state transfer.

Parameter groups
    Two AdamW groups, named ``"decay"`` and ``"no_decay"`` (the name is kept in each group,
    so it survives ``state_dict``): parameters with ``ndim < 2`` (biases, norm weights, mask-free
    scalars) get no weight decay, every matrix and embedding table does. That is what the
    official MSG code's name-based rule amounts to on Transformers, without guessing names.

Learning rate
    ``learning_rate(step, train)`` is a pure function of the optimizer step (0-based): linear
    warmup over ``warmup_steps`` (step 0 already gets ``lr / warmup_steps``), then cosine, linear
    or constant decay to ``lr * min_lr_ratio`` at the run's last step ``steps - 1``; ``wsd``
    holds the peak and decays linearly over the run's last ``decay_fraction`` only, so growth
    events before that train at the full rate. It spans the whole run; a growth stage with
    ``lr_restart`` restarts the decay (``restart=(step, fraction)``): from ``fraction * lr`` at
    that step down to the same final rate at the run's last step, in the same shape. The
    trainer writes the rate into every group before each optimizer step, which also covers
    the groups of an optimizer rebuilt at a growth event.

State transfer (``transfer_optimizer``)
    At a growth event the optimizer is rebuilt, of the same class and with the same group
    options, over the grown parameters: each joins the group of the parameter it came from
    and gets its state, every tensor shaped like the source (``exp_avg``, ``exp_avg_sq``,
    ``momentum_buffer``) zero-padded into the grown shape with the old entries at
    ``origin.positions``; ``step`` is kept (so the new entries get no bias correction, as in
    the official code). Parameters of new blocks (``origin.fresh``) start with empty state.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from msgc.errors import GrowthError
from msgc.spec import TrainSpec

__all__ = [
    "DECAY",
    "NO_DECAY",
    "Origin",
    "build_optimizer",
    "learning_rate",
    "pad_into",
    "param_groups",
    "set_learning_rate",
    "transfer_optimizer",
]

DECAY, NO_DECAY = "decay", "no_decay"
BETAS = (0.9, 0.95)


class Origin(Protocol):
    """Where a grown parameter came from (msgc.grow's ``origins`` values satisfy this)."""

    source: str  # the old model's parameter name
    positions: Sequence[torch.Tensor | None]  # per dim: old entries' positions (None: same)
    fresh: bool  # a new block's parameter: it starts with empty optimizer state


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The ``decay`` and ``no_decay`` groups of `model`'s parameters (tied ones once)."""
    params = list(model.parameters())  # nn.Module.parameters() yields a tied tensor once
    return [
        {"name": DECAY, "params": [p for p in params if p.ndim >= 2],
         "weight_decay": weight_decay},
        {"name": NO_DECAY, "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, train: TrainSpec) -> torch.optim.AdamW:
    """A fresh AdamW over `model` with the spec's weight decay and the step-0 learning rate."""
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay), lr=learning_rate(0, train), betas=BETAS
    )


def learning_rate(step: int, train: TrainSpec,
                  restart: tuple[int, float] | None = None) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run of ``train.steps``;
    with ``restart=(from_step, fraction)``, the decay restarts at ``fraction * lr`` there."""
    peak = train.lr
    if step < train.warmup_steps:
        return peak * (step + 1) / train.warmup_steps
    floor = peak * train.min_lr_ratio
    decay_start = train.warmup_steps
    if restart is not None and step >= restart[0]:
        decay_start = max(decay_start, restart[0])
        peak = train.lr * restart[1]
    if train.schedule == "constant":
        return peak
    if train.schedule == "wsd":
        decay_start = max(decay_start, train.steps - train.decay_steps())
        if step < decay_start:
            return peak  # the stable phase
    decay_steps = max(1, train.steps - 1 - decay_start)
    progress = min(1.0, (step - decay_start) / decay_steps)  # 0 -> 1 at the last step
    if train.schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak - (peak - floor) * progress  # linear, and wsd's decay


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def pad_into(
    old: torch.Tensor, shape: Sequence[int], positions: Sequence[torch.Tensor | None]
) -> torch.Tensor:
    """A zero tensor of `shape` with `old`'s entries at `positions` (per dim; None: same)."""
    if len(positions) != old.ndim or len(shape) != old.ndim:
        raise ValueError(
            f"positions for {len(positions)} dims and shape {tuple(shape)} do not fit a "
            f"tensor of shape {tuple(old.shape)}"
        )
    index = []
    for d, (pos, size) in enumerate(zip(positions, old.shape, strict=True)):
        if pos is None:
            if shape[d] != size:
                raise ValueError(f"dim {d} changed size ({size} -> {shape[d]}) without positions")
            pos = torch.arange(size)
        elif len(pos) != size:
            raise ValueError(f"dim {d} has {size} entries but {len(pos)} positions")
        view = [1] * old.ndim
        view[d] = -1
        index.append(pos.to(old.device).view(view))  # broadcasts to the old tensor's shape
    new = old.new_zeros(tuple(shape))
    new[tuple(index)] = old
    return new


def transfer_optimizer(
    old_optimizer: torch.optim.Optimizer,
    old_params: Mapping[str, nn.Parameter],
    grown: nn.Module,
    origins: Mapping[str, Origin],
) -> torch.optim.Optimizer:
    """A new optimizer of `old_optimizer`'s class over `grown`, its state carried across a
    growth event.

    `old_params` maps the old model's parameter names to its Parameters (as
    ``dict(old.named_parameters(remove_duplicate=False))``, so tied aliases resolve);
    `origins` maps the grown model's parameter names to their origins (``grown.origins``).
    Each grown parameter joins the group of the parameter it came from, with that group's
    options (lr, betas, weight decay, its name...); one whose source the optimizer did not
    train stays out of it (frozen stays frozen). Works for any optimizer whose per-parameter
    state holds tensors shaped like the parameter, scalar tensors and numbers (AdamW, Adam,
    SGD with momentum, RMSprop, ...); other state is refused with a GrowthError.
    """
    group_of = {param: i for i, group in enumerate(old_optimizer.param_groups)
                for param in group["params"]}
    groups = [{k: v for k, v in group.items() if k != "params"} | {"params": []}
              for group in old_optimizer.param_groups]
    moves = []
    for param, (name, origin) in _origins_by_param(grown, origins).items():
        if origin is None:
            raise GrowthError(f"transfer_optimizer: the grown parameter {name!r} has no "
                              "origin, so its optimizer group is unknown")
        source = old_params[origin.source]
        if source in group_of:
            groups[group_of[source]]["params"].append(param)
            moves.append((source, param, origin))
    optimizer = type(old_optimizer)(groups, **_constructor_options(old_optimizer))
    for source, param, origin in moves:
        old_state = old_optimizer.state.get(source)
        if old_state and not origin.fresh:
            optimizer.state[param] = _moved_state(old_state, source, param, origin.positions,
                                                  type(old_optimizer).__name__)
    return optimizer


def _constructor_options(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's ``defaults`` that its class's constructor takes."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return {k: v for k, v in optimizer.defaults.items() if k in accepted}


def _origins_by_param(grown: nn.Module, origins: Mapping[str, Origin]
                      ) -> dict[nn.Parameter, tuple[str, Origin | None]]:
    """Each unique Parameter of `grown` with the first of its names that has an origin (or
    its first name) and that origin."""
    found: dict[nn.Parameter, tuple[str, Origin | None]] = {}
    for name, param in grown.named_parameters(remove_duplicate=False):
        if param not in found or found[param][1] is None:
            found[param] = (name, origins.get(name))
    return found


def _moved_state(
    state: Mapping[str, Any],
    old: nn.Parameter,
    new: nn.Parameter,
    positions: Sequence[torch.Tensor | None],
    optimizer_name: str,
) -> dict[str, Any]:
    """`state` with every tensor shaped like `old` zero-padded to `new`'s shape, scalar
    tensors cloned, numbers kept; anything else cannot follow a growth."""
    moved = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == old.shape and value.ndim:
            moved[key] = pad_into(value, new.shape, positions).to(new.device)
        elif isinstance(value, torch.Tensor) and value.ndim == 0:
            moved[key] = value.clone()  # a step counter
        elif isinstance(value, (int, float, bool)):
            moved[key] = value
        else:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            raise GrowthError(
                f"cannot move {optimizer_name}'s state {key!r} ({type(value).__name__}"
                f"{f' of shape {shape}' if shape else ''}) for a parameter of shape "
                f"{tuple(old.shape)}: msgc moves state shaped like the parameter, scalars "
                "and numbers; use an optimizer of that form (AdamW, Adam, SGD...)")
    return moved
