"""The Hugging Face Trainer grows a tiny GPT-2 through MsgcGrowthCallback."""

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msgc
from msgc.errors import GrowthError

transformers = pytest.importorskip("transformers")  # its Trainer needs accelerate: no skip

from msgc.interop.hf import export_hf  # noqa: E402
from msgc.interop.hf_trainer import GrowableCausalLM, MsgcGrowthCallback  # noqa: E402

T, GROW, RAMP, STEPS = 16, 4, 2, 9  # grows at the start of step 4, folds at step 6


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=256, n_positions=T, n_embd=16, n_layer=2,
                                     n_head=2, use_cache=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def rows(text_file: Path, n: int) -> torch.Tensor:
    data = torch.tensor(list(text_file.read_bytes()[:n * T]))
    return data.view(n, T)


@torch.no_grad()
def loss_of(body: nn.Module, ids: torch.Tensor) -> float:
    """The test's own next-token loss of `body`'s logits, in eval mode."""
    training = body.training
    logits = body.eval()(ids)["logits"]
    body.train(training)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()


class Probe(transformers.TrainerCallback):
    """The loss of the Trainer's model on a fixed batch at the start of every step; at the
    growth step also at masks 1 (so a growth that changed nothing cannot pass)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids, self.losses, self.at_masks_1 = ids, {}, None

    def on_step_begin(self, args: Any, state: Any, control: Any, *, model: nn.Module,
                      **_: Any) -> None:
        self.losses[state.global_step] = loss_of(model.body, self.ids)
        if isinstance(model.body, msgc.GrownModule) and state.global_step == GROW:
            model.body.set_masks(1.0)
            self.at_masks_1 = loss_of(model.body, self.ids)
            model.body.set_masks(0.0)


class ProbeAfter(Probe):
    """The same probe, run after the growth callback (the Trainer warns on a class twice)."""


def arguments(tmp_path: Path, **overrides: Any) -> Any:
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], max_steps=STEPS,
        per_device_train_batch_size=4, learning_rate=1e-2, lr_scheduler_type="linear",
        logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        **overrides)


@pytest.mark.parametrize("optimizers", ["the trainer's", "your own"])
def test_the_trainer_grows_through_the_callback_and_keeps_the_loss(
        text_file: Path, tmp_path: Path, optimizers: str) -> None:
    data = rows(text_file, 64)
    dataset = [{"input_ids": r, "labels": r} for r in data]
    model = GrowableCausalLM(gpt2())
    mine: tuple = (None, None)
    if optimizers == "your own":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        mine = (optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / STEPS))
    growth = MsgcGrowthCallback([{"step": GROW, "hidden": 32, "heads": 4}],
                                example_inputs=(data[:2],), ramp_steps=RAMP)
    ids = torch.tensor(list(b"To be, or not to be, that is the question"[:T]))[None]
    before, after = Probe(ids), ProbeAfter(ids)
    trainer = transformers.Trainer(model=model, args=arguments(tmp_path), train_dataset=dataset,
                                   callbacks=[before, growth, after], optimizers=mine)
    trainer.train()

    assert [(e["step"], e["event"]) for e in growth.growth.events] == [(GROW, "grow"),
                                                                       (GROW + RAMP, "fold")]
    assert sorted(before.losses) == sorted(after.losses) == list(range(STEPS))
    assert after.losses[GROW] == pytest.approx(before.losses[GROW], rel=1e-5)  # the growth
    ramping = range(GROW + 1, GROW + RAMP + 1)  # masks move to 1 / RAMP, ..., 1 (folded)
    for step in set(range(STEPS)) - set(ramping):
        assert after.losses[step] == before.losses[step], step
    assert abs(after.at_masks_1 - before.losses[GROW]) > 1e-3  # the growth is real
    assert before.losses[GROW + 1] != after.losses[GROW]  # the grown model trains

    body = trainer.model.body
    assert trainer.model is model and body is growth.growth.model
    assert not isinstance(body, msgc.GrownModule)  # folded
    shapes = {n: tuple(p.shape) for n, p in body.named_parameters(remove_duplicate=False)}
    assert shapes["lm_head.weight"] == (256, 32)  # tied to wte: the graph holds it once
    assert shapes["transformer.wpe.weight"] == (T, 32)
    assert shapes["transformer.h.1.attn.c_attn.weight"] == (32, 96)
    trained = {p for group in trainer.optimizer.param_groups for p in group["params"]}
    assert trained == set(body.parameters())
    assert all(trainer.optimizer.state[p]["step"] == STEPS for p in trained)  # moved, kept
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # the schedule's end
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == STEPS and losses[-1] < losses[0]
    exported = export_hf(body, like=gpt2(), path=tmp_path / "hf", example_inputs=(data[:2],))
    assert (exported.config.n_embd, exported.config.n_head, exported.config.n_layer) == (32, 4, 2)


def test_a_model_the_callback_cannot_swap_into_is_refused_before_training(
        tmp_path: Path) -> None:
    ids = torch.randint(0, 256, (4, T))
    callback = MsgcGrowthCallback([{"step": 2, "hidden": 32}], example_inputs=(ids,),
                                  ramp_steps=1)
    trainer = transformers.Trainer(model=gpt2(), args=arguments(tmp_path),
                                   train_dataset=[{"input_ids": r, "labels": r} for r in ids],
                                   callbacks=[callback])
    with pytest.raises(GrowthError, match=r"pass GrowableCausalLM\(your_model\)"):
        trainer.train()
    assert callback.growth is None


def test_left_padding_is_refused_and_right_padding_matches_the_hf_loss() -> None:
    hf = gpt2().eval()
    model = GrowableCausalLM(hf)
    ids = torch.randint(0, 256, (2, T))
    right = torch.ones_like(ids)
    right[1, -3:] = 0
    labels = ids.masked_fill(right == 0, -100)
    with torch.no_grad():
        ours = model(ids, labels=labels, attention_mask=right).loss
        theirs = hf(ids, labels=labels, attention_mask=right).loss
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(GrowthError, match="padding_side='right'"):
        model(ids, labels=labels, attention_mask=right.flip(-1))
