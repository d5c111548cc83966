"""msgc.Growth in a plain training loop: a custom model grows twice and folds twice."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import msgc
from msgc.errors import GrowthError, SpecError
from msgc.train.optim import transfer_optimizer

VOCAB, T = 64, 12
SCHEDULE = [{"step": 3, "hidden": 48, "heads": 3, "lr_scale": 0.5},
            {"step": 8, "ffn": 160, "layers": 3}]
RAMP = 2  # folds at the start of steps 5 and 10
STEPS = 12


class Block(nn.Module):
    """A pre-LN block with fused qkv, as nanoGPT writes it."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.proj = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class TinyLM(nn.Module):
    def __init__(self, d: int = 32, n_head: int = 2, n_layer: int = 2) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(T, d)
        self.h = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, d)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    data = torch.randint(0, VOCAB, (4, T + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.1),
    "sgd_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_plain_loop_grows_twice_and_folds_twice(name: str) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = OPTIMIZERS[name](model)
    growth = msgc.Growth(SCHEDULE, model, optimizer, example_inputs=(batch(0)[0],),
                         ramp_steps=RAMP)
    losses = []
    for step in range(STEPS):
        x, y = batch(step % 2)  # two batches, so the loss can fall in 12 steps
        before_model = model
        model, optimizer = growth.step(step)
        if step in (3, 8):
            assert model is not before_model
            with torch.no_grad():  # the test's own check: the grown function is the old one
                old, new = loss_of(before_model.eval(), x, y), loss_of(model.eval(), x, y)
            model.train()
            assert math.isclose(float(new), float(old), rel_tol=1e-5), (step, old, new)
            assert any(optimizer.state[p] for p in model.parameters()), "state moved"
        loss = loss_of(model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert [(e["step"], e["event"]) for e in growth.events] == [
        (3, "grow"), (5, "fold"), (8, "grow"), (10, "fold")]
    assert not isinstance(model, msgc.GrownModule)  # folded: plain from step 10 on
    sizes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert sizes["h.2.fc.weight"] == (160, 48) and sizes["wte.weight"] == (VOCAB, 48)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_the_stage_multiplier_scales_the_loop_rates_and_the_scheduler_never_sees_it() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    growth = msgc.Growth(SCHEDULE[:1], model, optimizer, (batch(0)[0],), ramp_steps=RAMP,
                         lr_scheduler=scheduler)
    seen = []
    for step in range(6):
        model, optimizer = growth.step(step)
        x, y = batch(step)
        loss_of(model, x, y).backward()
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        name = "lm_head.weight"
        moved = weights[name] - dict(model.named_parameters())[name].detach()
        seen.append(float(moved.flatten()[0] / grads[name].flatten()[0]))  # the rate used
        optimizer.zero_grad()
        scheduler.step()
    assert scheduler.optimizer is optimizer
    expected = [0.1 * 0.9**s * m for s, m in enumerate([1, 1, 1, 1, 0.75, 0.5])]
    assert seen == pytest.approx(expected, rel=1e-4)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1 * 0.9**6)


def test_state_dict_resumes_mid_ramp() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = OPTIMIZERS["adamw"](model)
    growth = msgc.Growth(SCHEDULE, model, optimizer, (batch(0)[0],), ramp_steps=RAMP)
    for step in range(9):  # to mid-ramp of the second growth
        model, optimizer = growth.step(step)
        x, y = batch(step)
        loss_of(model, x, y).backward()
        optimizer.step()
        optimizer.zero_grad()
    # a checkpoint holds copies (state_dict() returns the live tensors)
    saved = copy.deepcopy((growth.state_dict(), model.state_dict(), optimizer.state_dict()))
    torch.manual_seed(1)
    fresh = TinyLM()
    resumed = msgc.Growth(SCHEDULE, fresh, OPTIMIZERS["adamw"](fresh), (batch(0)[0],),
                          ramp_steps=RAMP)
    resumed.load_state_dict(saved[0])
    resumed.model.load_state_dict(saved[1])
    resumed.optimizer.load_state_dict(saved[2])
    for step in range(9, STEPS):
        for g in (growth, resumed):
            m, o = g.step(step)
            x, y = batch(step)
            loss_of(m, x, y).backward()
            o.step()
            o.zero_grad()
    for (n, a), (_, b) in zip(growth.model.named_parameters(),
                              resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_an_optimizer_whose_state_cannot_move_is_refused() -> None:
    model = TinyLM()
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    loss_of(model, *batch(0)).backward()
    optimizer.step()
    grown = msgc.grow(model, (batch(0)[0],), hidden=48)
    with pytest.raises(GrowthError, match="cannot move Adafactor's state 'row_var'"):
        transfer_optimizer(optimizer, dict(model.named_parameters()), grown, grown.origins)


def test_schedules_are_checked_like_spec_files() -> None:
    model = TinyLM()
    optimizer = OPTIMIZERS["adamw"](model)
    with pytest.raises(SpecError, match="ramp_steps"):
        msgc.Growth(SCHEDULE, model, optimizer, (batch(0)[0],))
    with pytest.raises(SpecError, match=r"stages\[0\]\.hiden: unknown key"):
        msgc.Growth([{"step": 3, "hiden": 48}], model, optimizer, (batch(0)[0],), ramp_steps=2)
    with pytest.raises(SpecError, match=r"growth.stages\[0\].lr_restart: restarts need"):
        msgc.Growth([{"step": 3, "hidden": 48, "lr_restart": 1.0}], model, optimizer,
                    (batch(0)[0],), ramp_steps=2)


def test_a_plain_loop_with_growth_follows_msgc_train(text_file, cache) -> None:
    """The same schedule, data and seed: msgc train's loss curve, step by step, to 1e-6."""
    from msgc.train.data import prepare_data
    from msgc.train.models import make_model
    from msgc.train.optim import build_optimizer
    from msgc.train.trainer import Trainer
    from tests.train.test_trainer import make_spec

    spec = make_spec(text_file, fused_head=False)
    growth_spec = spec.growth.model_copy(update={"stages": [
        stage.model_copy(update={"lr_scale": 0.5 if i == 0 else None})
        for i, stage in enumerate(spec.growth.stages)]})
    spec = spec.model_copy(update={"growth": growth_spec})
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    reference = [row["loss"] for row in Trainer(spec, tokenizer, data, progress=False).run().rows]

    task = Trainer(spec, tokenizer, data, progress=False).task  # the run's batches
    torch.manual_seed(spec.train.seed)
    model = make_model(spec).train()
    optimizer = build_optimizer(model, spec.train)
    growth = msgc.Growth(spec.growth, model, optimizer, lambda step: task.model_inputs(
        *task.example_batch(step, 2)), train=spec.train, seed=spec.train.seed)
    losses = []
    for step in range(spec.train.steps):
        model, optimizer = growth.step(step)
        inputs, targets = task.train_batch(step)
        loss = task.loss(model, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert len(growth.events) == 4
    assert losses == pytest.approx(reference, rel=1e-6, abs=0)
