"""examples/grow_in_your_loop.py: a nanoGPT-style loop grows its model and keeps its loss."""

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msgc

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grow_in_your_loop.py"
STAGES = ({"step": 3, "hidden": 96, "heads": 6, "layers": 3},)  # from 64 wide, 4 heads, 2 deep


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grow_in_your_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def loss_of(model: nn.Module, ids: torch.Tensor) -> float:
    """The test's own next-token loss in eval mode (the model's mode is kept)."""
    training = model.training
    logits = model.eval()(ids[:, :-1])
    model.train(training)
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()


def observe(monkeypatch: pytest.MonkeyPatch, ids: torch.Tensor) -> list[dict]:
    """Wraps Growth.step: at each step that changed the model, the loss on `ids` of the model
    before (after the step: a fold's is then at masks 1) and after it, and at a growth the
    loss at masks 1 (so a growth that changed nothing cannot pass)."""
    seen: list[dict] = []
    step = msgc.Growth.step

    def observed(growth: msgc.Growth, i: int) -> tuple:
        previous = growth.model
        model, optimizer = step(growth, i)
        if model is not previous:
            seen.append({"step": i, "before": loss_of(previous, ids), "after": loss_of(model, ids)})
            if growth.events[-1]["event"] == "grow":
                model.set_masks(1.0)
                seen[-1]["masks_1"] = loss_of(model, ids)
                model.set_masks(0.0)
        return model, optimizer

    monkeypatch.setattr(msgc.Growth, "step", observed)
    return seen


def test_the_example_grows_folds_and_keeps_the_loss(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    ids = torch.tensor(list(b"Now is the winter of our discontent"[:17]))[None]  # T = 16
    seen = observe(monkeypatch, ids)
    result = load_example().main(steps=7, stages=STAGES, ramp_steps=2, batch_size=4,
                                 block_size=16, log_every=3)

    assert [(e["step"], e["event"]) for e in result["events"]] == [(3, "grow"), (5, "fold")]
    assert [s["step"] for s in seen] == [3, 5]
    for own, example in zip(seen, result["events"], strict=True):  # ours, then the loop's
        assert math.isclose(own["after"], own["before"], rel_tol=1e-5), own
        assert math.isclose(example["after"], example["before"], rel_tol=1e-5), example
    assert abs(seen[0]["masks_1"] - seen[0]["before"]) > 1e-3
    model = result["model"]
    assert not isinstance(model, msgc.GrownModule)  # folded at step 5
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    assert shapes["lm_head.weight"] == (256, 96) and shapes["h.2.c_attn.weight"] == (288, 96)
    assert len(result["losses"]) == 7 and all(math.isfinite(v) for v in result["losses"])
    printed = capsys.readouterr().out
    assert "step    3  grow {'hidden': 96, 'heads': 6, 'layers': 3}" in printed
    assert "step    6  loss" in printed
