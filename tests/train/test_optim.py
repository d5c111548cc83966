"""Tests for msgc.train.optim: parameter groups, the LR schedule, optimizer state transfer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from msgc.errors import GrowthError
from msgc.spec import TrainSpec
from msgc.train.optim import (
    DECAY,
    NO_DECAY,
    build_optimizer,
    learning_rate,
    pad_into,
    param_groups,
    set_learning_rate,
    transfer_optimizer,
)


@dataclass
class HandOrigin:
    """A hand-built origin, shaped like msgc.grow's."""

    source: str
    positions: list[torch.Tensor | None]
    fresh: bool = False


def train_spec(**fields) -> TrainSpec:
    return TrainSpec.model_validate({"steps": 11, "lr": 1.0, "min_lr_ratio": 0.1,
                                     "warmup_steps": 0, **fields})


# --- learning rate ----------------------------------------------------------------------


def test_warmup_is_linear_and_reaches_peak() -> None:
    train = train_spec(warmup_steps=4, schedule="constant")
    assert [learning_rate(s, train) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_runs_from_peak_to_floor_over_the_whole_run() -> None:
    train = train_spec(steps=12, warmup_steps=2, schedule="cosine")
    assert learning_rate(2, train) == pytest.approx(1.0)
    assert learning_rate(11, train) == pytest.approx(0.1)  # the last step
    middle = 2 + (11 - 2) / 2
    assert learning_rate(middle, train) == pytest.approx(0.55)
    values = [learning_rate(s, train) for s in range(2, 12)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_linear_and_constant_schedules() -> None:
    linear = train_spec(schedule="linear")
    assert [learning_rate(s, linear) for s in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])
    constant = train_spec(schedule="constant")
    assert {learning_rate(s, constant) for s in range(11)} == {1.0}


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction() -> None:
    train = train_spec(steps=20, warmup_steps=2, schedule="wsd", decay_fraction=0.25)
    rates = [learning_rate(s, train) for s in range(20)]
    assert rates[:2] == [0.5, 1.0]  # warmup
    assert set(rates[2:16]) == {1.0}  # stable until the last 5 steps
    assert rates[15:] == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])


def test_a_restart_decays_again_from_its_fraction_of_the_peak_to_the_same_floor() -> None:
    train = train_spec(schedule="linear")  # 11 steps, 1.0 -> 0.1
    restart = (6, 0.8)
    rates = [learning_rate(s, train, restart) for s in range(11)]
    assert rates[:6] == [learning_rate(s, train) for s in range(6)]  # before: unchanged
    assert rates[6:] == pytest.approx([0.8, 0.625, 0.45, 0.275, 0.1])
    cosine = train_spec(schedule="cosine")
    assert learning_rate(6, cosine, restart) == pytest.approx(0.8)
    assert learning_rate(10, cosine, restart) == pytest.approx(0.1)
    assert learning_rate(8, cosine, restart) == pytest.approx(0.45)  # the cosine's middle
    constant = train_spec(schedule="constant")
    assert [learning_rate(s, constant, restart) for s in (5, 6, 10)] == [1.0, 0.8, 0.8]


def test_a_restart_in_a_wsd_run_holds_its_rate_until_the_decay() -> None:
    train = train_spec(steps=20, warmup_steps=2, schedule="wsd", decay_fraction=0.25)
    rates = [learning_rate(s, train, (8, 0.5)) for s in range(20)]
    assert set(rates[2:8]) == {1.0} and set(rates[8:16]) == {0.5}
    assert rates[15:] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])


def test_set_learning_rate_reaches_every_group() -> None:
    optimizer = build_optimizer(nn.Linear(3, 2), train_spec(lr=0.5, schedule="constant"))
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]
    set_learning_rate(optimizer, 0.125)
    assert [g["lr"] for g in optimizer.param_groups] == [0.125, 0.125]


# --- parameter groups -------------------------------------------------------------------


def test_no_weight_decay_for_vectors_and_tied_weights_once() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 10))
    model[2].weight = model[0].weight  # tied head
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert (decay["name"], decay["weight_decay"]) == (DECAY, 0.1)
    assert (no_decay["name"], no_decay["weight_decay"]) == (NO_DECAY, 0.0)
    assert [p is model[0].weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {
        id(model[1].weight), id(model[1].bias), id(model[2].bias)}


# --- state transfer ---------------------------------------------------------------------


def test_pad_into_places_entries_and_zeros_the_rest() -> None:
    old = torch.arange(1.0, 7.0).view(2, 3)
    new = pad_into(old, (4, 3), [torch.tensor([0, 2]), None])
    assert torch.equal(new, torch.tensor([[1.0, 2, 3], [0, 0, 0], [4, 5, 6], [0, 0, 0]]))
    with pytest.raises(ValueError, match="without positions"):
        pad_into(old, (4, 4), [torch.tensor([0, 2]), None])


def trained_optimizer(model: nn.Module, steps: int = 3) -> torch.optim.AdamW:
    """AdamW on `model` after `steps` steps, so its state is non-zero."""
    optimizer = build_optimizer(model, train_spec(lr=0.01, weight_decay=0.1))
    for _ in range(steps):
        model(torch.randn(5, model[0].in_features)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def test_transfer_pads_moments_at_positions_and_keeps_step() -> None:
    torch.manual_seed(0)
    old = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    optimizer = trained_optimizer(old)
    set_learning_rate(optimizer, 0.005)
    grown = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 5))
    rows, cols = torch.tensor([0, 2, 4]), torch.tensor([1, 3])
    origins = {
        "0.weight": HandOrigin("0.weight", [rows, cols]),
        "0.bias": HandOrigin("0.bias", [rows]),
        "1.weight": HandOrigin("1.weight", [rows]),
        "1.bias": HandOrigin("1.bias", [rows]),
        "2.weight": HandOrigin("0.weight", [None, None], fresh=True),
        "2.bias": HandOrigin("0.bias", [None], fresh=True),
    }
    moved = transfer_optimizer(optimizer, dict(old.named_parameters()), grown, origins)

    old_state = optimizer.state[old[0].weight]
    state = moved.state[grown[0].weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert state[key].shape == (5, 4)
        assert torch.equal(state[key][rows[:, None], cols[None, :]], old_state[key])
        kept = torch.zeros(5, 4, dtype=torch.bool)
        kept[rows[:, None], cols[None, :]] = True
        assert not state[key][~kept].any()
    assert state["step"] == old_state["step"] == 3
    assert state["step"] is not old_state["step"]
    assert torch.equal(moved.state[grown[1].bias]["exp_avg"][rows],
                       optimizer.state[old[1].bias]["exp_avg"])
    assert grown[2].weight not in moved.state and grown[2].bias not in moved.state

    decay, no_decay = moved.param_groups
    assert (decay["name"], decay["weight_decay"], decay["lr"]) == (DECAY, 0.1, 0.005)
    assert (no_decay["name"], no_decay["weight_decay"]) == (NO_DECAY, 0.0)
    assert {id(p) for p in decay["params"]} == {id(grown[0].weight), id(grown[2].weight)}


def test_transferred_optimizer_steps_and_unchanged_params_match() -> None:
    """A same-shape parameter continues exactly as it would have without the transfer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3))
    optimizer = trained_optimizer(model)
    twin = nn.Sequential(nn.Linear(3, 3))
    twin.load_state_dict(model.state_dict())
    origins = {name: HandOrigin(name, [None] * p.ndim) for name, p in twin.named_parameters()}
    moved = transfer_optimizer(optimizer, dict(model.named_parameters()), twin, origins)
    for m, opt in ((model, optimizer), (twin, moved)):
        m[0].weight.grad = torch.ones(3, 3)
        m[0].bias.grad = torch.ones(3)
        opt.step()
    assert torch.equal(model[0].weight, twin[0].weight)
    assert math.isclose(float(moved.state[twin[0].bias]["step"]), 4.0)


def test_transfer_keeps_frozen_parameters_out_and_groups_by_origin() -> None:
    """Any optimizer class: each grown parameter joins its source's group; a parameter the
    optimizer did not train stays out; SGD's momentum moves like Adam's moments."""
    torch.manual_seed(0)
    old = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    old[1].requires_grad_(False)
    optimizer = torch.optim.SGD([{"params": [old[0].weight], "lr": 0.1},
                                 {"params": [old[0].bias], "lr": 0.2, "name": "biases"}],
                                lr=0.5, momentum=0.9)
    old(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    grown = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    rows = torch.tensor([0, 2])
    origins = {"0.weight": HandOrigin("0.weight", [rows, None]),
               "0.bias": HandOrigin("0.bias", [rows]),
               "1.weight": HandOrigin("1.weight", [None, rows]),
               "1.bias": HandOrigin("1.bias", [None])}
    moved = transfer_optimizer(optimizer, dict(old.named_parameters()), grown, origins)
    assert isinstance(moved, torch.optim.SGD) and moved.defaults["momentum"] == 0.9
    weights, biases = moved.param_groups
    assert weights["params"] == [grown[0].weight] and weights["lr"] == 0.1
    assert biases["params"] == [grown[0].bias] and (biases["lr"], biases["name"]) == (0.2,
                                                                                      "biases")
    assert torch.equal(moved.state[grown[0].weight]["momentum_buffer"][rows],
                       optimizer.state[old[0].weight]["momentum_buffer"])
    assert not moved.state[grown[0].weight]["momentum_buffer"][1].any()


def test_transfer_refuses_a_parameter_without_origin() -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(GrowthError, match="'bias' has no origin"):
        transfer_optimizer(optimizer, dict(model.named_parameters()), model,
                           {"weight": HandOrigin("weight", [None, None])})
