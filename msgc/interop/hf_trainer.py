"""The Hugging Face `Trainer` grows a model on an msgc schedule: a callback over msgc.Growth.

    model = GrowableCausalLM(GPT2LMHeadModel(config))
    growth = MsgcGrowthCallback([{"step": 300, "hidden": 512, "heads": 8}], ramp_steps=100,
                                example_inputs=(ids,))
    Trainer(model=model, args=args, train_dataset=data, callbacks=[growth]).train()

At the start of every optimizer step (``on_step_begin``, before its first micro-batch) the
callback calls ``growth.step(state.global_step)`` and puts what it returns in place:

* the model: the Trainer keeps one model object, `GrowableCausalLM`; its ``body`` (the
  model msgc grows, ``body(input_ids)`` -> logits) is replaced after a growth or a fold.
  The Trainer's forward, gradient clipping and ``zero_grad`` go through that object, so
  they reach the new parameters; accelerate's wrapping of it (autocast) stays in place.
* the optimizer: the Trainer's is accelerate's `AcceleratedOptimizer`, which delegates to
  the torch optimizer it wraps. The callback re-initialises that wrapper in place around
  the optimizer msgc rebuilt (state moved, groups kept), so the Trainer, the Accelerator
  and the Trainer's LR scheduler (made over the wrapper) all hold the right one. A
  scheduler passed as ``Trainer(optimizers=(opt, scheduler))`` is pointed at each new
  optimizer by msgc.Growth.

The learning-rate multipliers of the stages (``lr_scale``) apply on top of the Trainer's
rates at each ``optimizer.step()``; the Trainer logs its own, unscaled rate. One process
only (no DDP, FSDP or DeepSpeed); ``resume_from_checkpoint`` past a growth is not supported
(the Trainer loads the weights before any callback could replay the growth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import CausalLMOutput

from msgc.errors import GrowthError
from msgc.growth import ExampleInputs, Growth
from msgc.spec import GrowthSpec, Stage

__all__ = ["GrowableCausalLM", "MsgcGrowthCallback"]


class GrowableCausalLM(nn.Module):
    """The model the Trainer trains: the logits of ``body(input_ids)`` and Hugging Face's
    causal-LM loss (`ForCausalLMLoss`: labels shifted inside, -100 ignored, summed over
    ``num_items_in_batch`` under gradient accumulation, as the Trainer's own LMs do).

    `body` is what msgc grows: a module whose output is the logits or has ``"logits"`` (a
    `transformers` LM as constructed). It sees ``input_ids`` only, which is
    exact for rows of tokens followed by padding (causal attention never looks right); a
    left-padded ``attention_mask`` is refused.
    """

    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch ...
    loss_type = "ForCausalLM"  # ... counted over labels[..., 1:]

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                num_items_in_batch: torch.Tensor | int | None = None) -> CausalLMOutput:
        if attention_mask is not None:
            _check_right_padded(attention_mask)
        output = self.body(input_ids)
        logits = output if isinstance(output, torch.Tensor) else output["logits"]
        loss = None if labels is None else ForCausalLMLoss(
            logits, labels, logits.size(-1), num_items_in_batch=num_items_in_batch)
        return CausalLMOutput(loss=loss, logits=logits)


def _check_right_padded(attention_mask: torch.Tensor) -> None:
    """Every row is ones, then zeros."""
    if not torch.equal(attention_mask.cummin(dim=-1).values, attention_mask):
        raise GrowthError("GrowableCausalLM: the body sees input_ids only, so padding must "
                          "come after the tokens (padding_side='right'), not before them")


class MsgcGrowthCallback(TrainerCallback):
    """Drives `msgc.Growth` from the Trainer's loop (see the module docstring).

    `schedule`, `example_inputs`, `ramp_steps` and `seed` are msgc.Growth's (the schedule a
    growth spec, its dict, or a list of stages with `ramp_steps`). The controller is made at
    ``on_train_begin``, over the Trainer's model (a `GrowableCausalLM`) and optimizer, and
    kept as ``self.growth`` (its ``events`` list what happened).
    """

    def __init__(self, schedule: GrowthSpec | Mapping[str, Any] | Sequence[Stage | Mapping],
                 example_inputs: ExampleInputs, *, ramp_steps: int | None = None,
                 seed: int = 0) -> None:
        self.schedule, self.example_inputs = schedule, example_inputs
        self.ramp_steps, self.seed = ramp_steps, seed
        self.growth: Growth | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, *, model: nn.Module,
                       optimizer: AcceleratedOptimizer, lr_scheduler: Any, **_: Any) -> None:
        _refuse_unsupported(args, model, optimizer)
        inner = optimizer.optimizer
        own_scheduler = lr_scheduler if lr_scheduler.optimizer is inner else None
        self.growth = Growth(self.schedule, model.body, inner, self.example_inputs,
                             ramp_steps=self.ramp_steps, lr_scheduler=own_scheduler,
                             seed=self.seed)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, *, model: GrowableCausalLM,
                      optimizer: AcceleratedOptimizer, **_: Any) -> None:
        body, inner = self.growth.step(state.global_step)
        if body is not model.body:
            model.body = body
        if inner is not optimizer.optimizer:
            placement = optimizer.device_placement  # the state already sits by its params
            AcceleratedOptimizer.__init__(optimizer, inner, device_placement=False,
                                          scaler=optimizer.scaler)
            optimizer.device_placement = placement


def _refuse_unsupported(args: TrainingArguments, model: nn.Module, optimizer: Any) -> None:
    """What the swap cannot follow, as errors that say what to change."""
    if not isinstance(model, GrowableCausalLM):
        raise GrowthError(f"MsgcGrowthCallback: the Trainer's model is a {type(model).__name__}"
                          "; pass GrowableCausalLM(your_model) as Trainer(model=...)")
    if args.world_size > 1 or type(optimizer) is not AcceleratedOptimizer:
        raise GrowthError("MsgcGrowthCallback: growth under the Trainer runs in one process "
                          "without DeepSpeed/FSDP; swapping a model inside DDP, FSDP or "
                          "DeepSpeed is not supported")
