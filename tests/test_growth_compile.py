"""A model under torch.compile keeps working across growth and fold: it is compiled again
where the structure changed, never for a new mask value (the masks are buffers)."""

from __future__ import annotations

import math

import torch

import msgc
from tests.test_growth import RAMP, SCHEDULE, TinyLM, batch, loss_of


class CountingBackend:
    """torch.compile's aot_eager backend (real Dynamo and AOTAutograd), counting graphs."""

    def __init__(self) -> None:
        self.graphs = 0
        self.aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return self.aot_eager(gm, example_inputs)


def test_compiled_training_across_two_growths_and_folds() -> None:
    torch.manual_seed(0)
    backend = CountingBackend()
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    growth = msgc.Growth(SCHEDULE, model, optimizer, (batch(0)[0],), ramp_steps=RAMP)
    compiled = torch.compile(model, backend=backend)
    new_graphs = {}
    for step in range(12):
        x, y = batch(step % 2)
        grown, optimizer = growth.step(step)
        if grown is not model:  # a growth or a fold: compile the new structure
            with torch.no_grad():
                before = float(loss_of(compiled.eval(), x, y))
            model, compiled = grown, torch.compile(grown, backend=backend)
            with torch.no_grad():
                after = float(loss_of(compiled.eval(), x, y))
            compiled.train()
            if step in (3, 8):  # growth: the function is unchanged at masks 0
                assert math.isclose(after, before, rel_tol=1e-5), (step, before, after)
        graphs = backend.graphs
        loss = loss_of(compiled, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        new_graphs[step] = backend.graphs - graphs
        assert math.isfinite(float(loss.detach()))
    assert [e["step"] for e in growth.events] == [3, 5, 8, 10]
    assert all(new_graphs[s] > 0 for s in (0, 3, 5, 8, 10))  # each structure once
    mid_ramp = (4, 9)  # masks at 0.5 after 0 at the growth step: no new graph
    assert all(new_graphs[s] == 0 for s in mid_ramp)
    assert all(new_graphs[s] == 0 for s in (1, 2, 6, 7, 11))
