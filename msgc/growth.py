"""The growth schedule as a controller for any training loop.

    growth = msgc.Growth(spec.growth, model, optimizer, example_inputs=(ids,))
    for step in range(steps):
        model, optimizer = growth.step(step)   # grows, ramps, folds when the schedule says
        loss = loss_fn(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()

`growth.step(step)`, called once at the start of every optimizer step (0-based):

1. ramp: if a growth at step ``g`` is ramping, its masks are set to
   ``c = (step - g) / ramp_steps``; at ``c = 1`` they are folded away (`msgc.fold` keeps the
   Parameters, so the optimizer carries on with the folded model);
2. grow: if a stage starts at `step`, the model grows to its sizes (`msgc.grow`, verify on,
   masks at 0; `msgc.fuse` unless ``fuse`` is false), and the optimizer is rebuilt over the
   grown parameters with its state moved (`msgc.train.optim.transfer_optimizer`);
3. learning rate: the stages' ``lr_scale`` multiplies every optimizer step's rate, moving
   from the previous stage's multiplier to the new one's with the masks. With ``train``
   (msgc's own schedule, as `msgc train` uses it) the controller writes the whole rate,
   ``lr_restart`` included, into the groups; otherwise the multiplier applies on top of
   whatever rate the groups hold at ``optimizer.step()`` (a torch LR scheduler's, or one
   the loop sets), through optimizer step hooks, so a scheduler never sees it.

`growth.step` returns the model and optimizer to use from then on: the same objects on
ordinary steps, new ones after a growth or a fold. A torch LR scheduler given as
``lr_scheduler`` is pointed at each new optimizer. ``growth.events`` lists what happened;
``state_dict()`` / ``load_state_dict()`` resume it (see `Growth.load_state_dict`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from msgc.compiler import GrownModule, fold, fuse, grow
from msgc.errors import SpecError
from msgc.spec import GrowthSpec, Stage, TrainSpec, parse_growth
from msgc.train.optim import learning_rate, set_learning_rate, transfer_optimizer

ExampleInputs = tuple | Callable[[int], tuple]
"""The model's example arguments, or a function of the step that returns them."""
Event = dict[str, Any]
Swap = Callable[[nn.Module, torch.optim.Optimizer], tuple[nn.Module, torch.optim.Optimizer]]
"""Turns (model, optimizer) into another form, e.g. gathers shards before an event."""


def _unchanged(model: nn.Module, optimizer: torch.optim.Optimizer
               ) -> tuple[nn.Module, torch.optim.Optimizer]:
    return model, optimizer


class Growth:
    """Grows, ramps and folds `model` on a schedule, keeping `optimizer` in step with it.

    `schedule` is a spec's growth section (`GrowthSpec`, or its dict), or a list of stages
    (`Stage`s or dicts such as ``{"step": 300, "hidden": 256}``) with `ramp_steps`.
    ``seed + i + 1`` seeds the new weights of the i-th growth. ``unshard`` / ``reshard``
    wrap every growth and fold (the trainer gathers and re-shards FSDP state there).
    """

    def __init__(
        self,
        schedule: GrowthSpec | Mapping[str, Any] | Sequence[Stage | Mapping[str, Any]],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_inputs: ExampleInputs,
        *,
        ramp_steps: int | None = None,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        train: TrainSpec | None = None,
        seed: int = 0,
        verify: bool = True,
        unshard: Swap = _unchanged,
        reshard: Swap = _unchanged,
    ) -> None:
        self.spec = _growth_spec(schedule, ramp_steps)
        self.model, self.optimizer = model, optimizer
        self.example_inputs = example_inputs
        self.lr_scheduler, self.train, self.seed, self.verify = lr_scheduler, train, seed, verify
        self.unshard, self.reshard = unshard, reshard
        self.stages = {stage.step: stage for stage in self.spec.stages}
        self.lr_scales = self.spec.lr_scales()  # the multiplier after 0, 1, ... growths
        self.lr_restarts = self.spec.lr_restarts()
        if train is None:
            _refuse_restarts(self.spec)
        self.stage = 0  # growth events so far
        self.ramp_start: int | None = None  # the step of the growth still ramping
        self.events: list[Event] = []
        self._current_step = 0
        self._hooks: list[RemovableHandle] = []
        self._hook_optimizer()

    # --- the loop ------------------------------------------------------------------------

    def step(self, step: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Ramp, fold and grow as the schedule says at `step`; the model and optimizer.

        The same as `ramp_step`, then `grow_step`, then `apply_learning_rate` (a loop that
        checks something between them, as msgc train checks the loss, calls them itself)."""
        self.ramp_step(step)
        self.grow_step(step)
        self.apply_learning_rate(step)
        return self.model, self.optimizer

    def ramp_step(self, step: int) -> Event | None:
        """Set the ramping masks for `step`; fold them at 1 (then the fold event)."""
        self._current_step = step
        if self.ramp_start is None:
            return None
        c = self.mask_at(step)
        self.model.set_masks(c)
        if c < 1.0:
            return None
        start = time.perf_counter()
        model, optimizer = self.unshard(self.model, self.optimizer)
        model.set_masks(1.0)
        self.replace(*self.reshard(fold(model), optimizer))
        self.ramp_start = None
        return self._log({"step": step, "event": "fold", "stage": self.stage,
                          "seconds": time.perf_counter() - start})

    def grow_step(self, step: int) -> Event | None:
        """Grow if a stage starts at `step` (then the growth event)."""
        self._current_step = step
        stage = self.stages.get(step)
        if stage is None or self.stage >= len(self.spec.stages):
            return None
        start = time.perf_counter()
        model, optimizer = self.unshard(self.model, self.optimizer)
        old_params = dict(model.named_parameters(remove_duplicate=False))
        grown = self.grown(model, stage, self.stage, step, self.verify)
        optimizer = transfer_optimizer(optimizer, old_params, grown, grown.origins)
        self.replace(*self.reshard(grown, optimizer))
        self.ramp_start, self.stage = step, self.stage + 1
        return self._log({"step": step, "event": "grow", "stage": self.stage,
                          "sizes": stage.sizes(), "seconds": time.perf_counter() - start})

    def apply_learning_rate(self, step: int) -> None:
        """With ``train``: write msgc's rate for `step` into every group (else nothing: the
        multiplier rides on the loop's own rates)."""
        if self.train is not None:
            set_learning_rate(self.optimizer, self.learning_rate(step))

    def _log(self, event: Event) -> Event:
        self.events.append(event)
        return event

    def mask_at(self, step: int) -> float:
        """The ramping masks' value at `step` (1 when nothing ramps)."""
        if self.ramp_start is None:
            return 1.0
        return min(1.0, (step - self.ramp_start) / self.spec.ramp_steps)

    def lr_multiplier(self, step: int) -> float:
        """The stages' learning-rate multiplier at `step` (blended over a ramp)."""
        return self._blended(step, lambda stage: self.lr_scales[stage])

    def learning_rate(self, step: int) -> float:
        """msgc's rate at `step` (needs ``train``): the schedule with the stage's restart,
        times its multiplier, moving from the previous stage's with the masks."""
        if self.train is None:
            raise SpecError("Growth.learning_rate needs train= (msgc's schedule)")
        train = self.train
        return self._blended(step, lambda stage: learning_rate(
            step, train, self.lr_restarts[stage]) * self.lr_scales[stage])

    def _blended(self, step: int, value: Callable[[int], float]) -> float:
        if self.ramp_start is None:
            return value(self.stage)
        previous = value(self.stage - 1)
        return previous + self.mask_at(step) * (value(self.stage) - previous)

    def grown(self, model: nn.Module, stage: Stage, index: int, step: int,
              verify: bool) -> GrownModule:
        """`model` grown to `stage` (the `index`-th growth, at `step`) as the schedule does."""
        spec = self.spec
        example = self._example(step)
        device = next(model.parameters()).device
        grown = grow(model, example, **stage.sizes(), init=spec.init, init_std=spec.init_std,
                     seed=self.seed + index + 1, depth_placement=spec.depth_placement,
                     verify=verify).to(device).train(model.training)
        return fuse(grown) if spec.fuse else grown

    def _example(self, step: int) -> tuple:
        inputs = self.example_inputs
        return tuple(inputs(step) if callable(inputs) else inputs)

    def replace(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Use `model` and `optimizer` from now on, e.g. after sharding them (the LR
        scheduler and the multiplier's hooks follow)."""
        self.model = model
        if optimizer is not self.optimizer:
            self.optimizer = optimizer
            if self.lr_scheduler is not None:
                self.lr_scheduler.optimizer = optimizer
            self._hook_optimizer()

    # --- the learning-rate multiplier on a loop's own rates --------------------------------

    def _hook_optimizer(self) -> None:
        """Scale the groups' rates by the multiplier for each ``optimizer.step()`` only."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self.train is not None or all(scale == 1.0 for scale in self.lr_scales):
            return
        unscaled: list[Any] = []

        def scale(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            multiplier = self.lr_multiplier(self._current_step)
            unscaled[:] = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * multiplier

        def restore(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            for group, lr in zip(optimizer.param_groups, unscaled, strict=True):
                group["lr"] = lr

        self._hooks = [self.optimizer.register_step_pre_hook(scale),
                       self.optimizer.register_step_post_hook(restore)]

    # --- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the schedule stands: growth events so far, the ramp, the events' log."""
        return {"stage": self.stage, "ramp_start": self.ramp_start,
                "grown": isinstance(self.model, GrownModule), "events": list(self.events)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: replay the growth events on the starting model and optimizer this
        controller was made with, so ``self.model`` and ``self.optimizer`` have the saved
        structure; then load the checkpoint's weights and optimizer state into those."""
        if self.stage or self.events:
            raise SpecError("Growth.load_state_dict: call it on a new controller, before "
                            "its first step")
        self.replace(*self._replayed(self.model, self.optimizer, state["stage"],
                                      state["grown"]))
        self.stage, self.ramp_start = state["stage"], state["ramp_start"]
        self.events = list(state["events"])

    def structure(self, model: nn.Module, stage: int, grown: bool) -> nn.Module:
        """`model` (the starting structure) with the first `stage` growth events replayed,
        the last still ramping if `grown`; new weights are those the schedule draws."""
        return self._replayed(model, None, stage, grown)[0]

    def _replayed(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                  stage: int, grown: bool) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        stages = self.spec.stages
        for index in range(stage):
            old_params = dict(model.named_parameters(remove_duplicate=False))
            model = self.grown(model, stages[index], index, stages[index].step, verify=False)
            if optimizer is not None:
                optimizer = transfer_optimizer(optimizer, old_params, model, model.origins)
            if index < stage - 1 or not grown:
                model.set_masks(1.0)
                model = fold(model)
        return model, optimizer


def _growth_spec(schedule: Any, ramp_steps: int | None) -> GrowthSpec:
    """The schedule as a validated GrowthSpec (a list of stages needs `ramp_steps`)."""
    if isinstance(schedule, GrowthSpec):
        if ramp_steps is not None:
            raise SpecError("ramp_steps: the growth spec has its own; drop ramp_steps=")
        return schedule
    if isinstance(schedule, Mapping):
        data = dict(schedule)
    else:
        if ramp_steps is None:
            raise SpecError("ramp_steps: a list of stages needs ramp_steps= (the steps over "
                            "which each growth's masks go from 0 to 1)")
        data = {"stages": [s.model_dump() if isinstance(s, Stage) else s for s in schedule]}
    if ramp_steps is not None:
        data["ramp_steps"] = ramp_steps
    return parse_growth(data)


def _refuse_restarts(spec: GrowthSpec) -> None:
    """lr_restart is defined on msgc's schedule; a loop's own rates have no peak to restart."""
    for i, stage in enumerate(spec.stages):
        if stage.lr_restart is not None:
            raise SpecError(
                f"growth.stages[{i}].lr_restart: restarts need msgc's learning-rate schedule "
                "(Growth(..., train=spec.train), as msgc train runs it); with your own "
                "scheduler, drop lr_restart or restart your scheduler at that step")
