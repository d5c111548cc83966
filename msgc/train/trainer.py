"""The training loop: a spec's growth schedule end to end.

Each optimizer step ``s`` (0-based) trains the architecture ``spec.arch_at(s)``:

1. structure, through the run's `msgc.Growth` (the same controller a user's own loop
   drives): if masks are ramping since a growth at step ``g``, set them to
   ``c = (s - g) / ramp_steps``; at ``c = 1`` fold them away. Then, if a stage starts at
   ``s``, grow (verify on, masks at 0; fused unless ``growth.fuse`` is false) with the
   AdamW state moved to the grown parameters, and check that the loss on this step's first
   micro-batch, in eval mode and fp32, is the same just before and just after (1e-5
   relative).
2. ``grad_accum_steps`` micro-batches forward and backward under the run's autocast, the
   learning rate of step ``s`` (a pure function of ``s`` over the whole run), gradient
   clipping, one AdamW step. Growth and ramps happen once per optimizer step.
3. one metrics row (see msgc.train.metrics); every ``eval_every`` steps and at the last step
   a validation evaluation, and after the last step a test evaluation.

Everything the loop carries from one step to the next lives in `RunState`: model (plain, or
grown with its masks), optimizer, step, growth stage, ramp start, counters and metrics. With
the torch RNG state (dropout, new weights' init is seeded per stage) that is all a checkpoint
needs: training batches are a pure function of the step.

Several processes (``parallel``, see msgc.train.distributed): every rank trains on its rows of
the same global batch through a wrapper (DDP around ``state.model``, or ``state.model`` itself
sharded in place by FSDP2), grows, folds and checks preservation the same way (each on its own
rows; a failure on any rank fails every rank), and reports global means. Growth and fold run
on the unsharded model, which is then re-wrapped (or re-sharded). Rank 0 alone logs and writes
metrics, checkpoints and outputs; a checkpoint holds the full model and optimizer state, so it
resumes on any number of processes. Each rank's dropout draws from its own RNG stream.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

import msgc
from msgc.errors import (
    CheckpointError,
    PreservationError,
    RunDirError,
    SpecError,
    TrainingDivergedError,
)
from msgc.graph.trace import to_ir
from msgc.interop.emit import emit_module
from msgc.interop.hf import export_hf
from msgc.interop.hf_models import HFLogits, final_hf_section
from msgc.models import count_parameters
from msgc.spec import CustomModelSpec, FamilyModelSpec, HFModelSpec, Spec
from msgc.train.checkpoint import (
    list_checkpoints,
    load_latest,
    spec_fingerprint,
    write_checkpoint,
)
from msgc.train.data import IGNORE_INDEX, TokenData
from msgc.train.distributed import Parallel, rank_seed
from msgc.train.flops import stage_cost
from msgc.train.lm_head import head_split
from msgc.train.metrics import MetricsLog
from msgc.train.models import has_masked_head, is_masked_lm, make_model, vocab_size
from msgc.train.optim import (
    build_optimizer,
)
from msgc.train.plot import plot_runs
from msgc.train.precision import Precision, resolve_device
from msgc.train.progress import progress_display
from msgc.train.resume import capture, restore_rng
from msgc.train.run_dir import prepare_run_dir
from msgc.train.task import Evaluation, Task
from msgc.train.tokenizer import Tokenizer

__all__ = ["PRESERVATION_RTOL", "RunResult", "RunState", "Trainer"]

PRESERVATION_RTOL = 1e-5
"""How far the loss just after a growth may move from the loss just before (relative)."""


@dataclass
class RunState:
    """Everything the loop carries from one optimizer step to the next."""

    growth: msgc.Growth  # the schedule, with the model (plain, or a msgc.GrownModule while
    # its masks ramp; unwrapped, under FSDP sharded in place) and its AdamW
    metrics: MetricsLog
    step: int = 0  # optimizer steps done: the index of the next step
    tokens: int = 0
    flops: int = 0
    seconds: float = 0.0  # training wall time so far, evaluation excluded

    @property
    def model(self) -> nn.Module:
        return self.growth.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.growth.optimizer

    @property
    def stage(self) -> int:
        """Growth events done."""
        return self.growth.stage

    @property
    def ramp_start(self) -> int | None:
        """The step of the growth whose masks are ramping."""
        return self.growth.ramp_start


@dataclass
class RunResult:
    """A finished run's figures (written to ``summary.json``) and its metrics rows."""

    name: str
    steps: int
    params: int
    wall_seconds: float
    flops: int
    tokens: int
    val_loss: float
    val_bpb: float
    test_loss: float
    test_bpb: float
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The figures without the rows."""
        return {k: v for k, v in self.__dict__.items() if k != "rows"}


class Trainer:
    """Trains `spec` on prepared data; with `out_dir` it writes a run directory.

    The run directory holds ``spec.yaml`` (resolved), ``metrics.jsonl``, and at the end
    ``model.safetensors`` (the folded final model), ``summary.json``, ``loss.png`` and the
    final model in a loadable form: ``model.json`` (a reference family's architecture),
    ``hf/`` (a Hugging Face model's save_pretrained) or ``model/`` (a custom model, as a
    standalone module with its weights). A new run refuses a directory that holds a run
    unless `overwrite` (which replaces that run's outputs); `resume` refuses one that does
    not exist (msgc.train.run_dir).
    """

    def __init__(
        self,
        spec: Spec,
        tokenizer: Tokenizer,
        data: TokenData,
        out_dir: Path | None = None,
        progress: bool = True,
        resume: bool = False,
        parallel: Parallel | None = None,
        overwrite: bool = False,
    ) -> None:
        vocab_size(spec)  # a spec msgc cannot train is refused here
        train = spec.train
        # torch.export bakes a Hugging Face model's batch size into the grown graph: grow it
        # with whole batches and pad short evaluation batches
        self.fixed_batch = isinstance(spec.model, HFModelSpec)
        self.spec = spec
        self.out_dir = out_dir
        self.parallel = parallel or Parallel.single()
        if out_dir is not None:
            self._claim_run_dir(resume, overwrite)
        if self.fixed_batch and self.parallel.world_size > 1:
            raise SpecError("model.hf: Hugging Face models train in one process for now "
                            "(their exported graphs fix the batch size); drop --distributed")
        if self.fixed_batch and spec.growth.stages:  # refused now, not at the export
            final_hf_section(spec.model, spec.arch_at(train.steps))
        self.progress = progress and self.parallel.is_main
        self.device = self.parallel.device(resolve_device(train.device))
        self.precision = Precision(self.device, train.dtype)
        self.task = Task(tokenizer, data, train.batch_size, train.seq_len, train.seed,
                         mlm=is_masked_lm(spec), masked_head=has_masked_head(spec),
                         rank=self.parallel.rank,
                         pad_eval=self.fixed_batch,
                         world_size=self.parallel.world_size)
        self.tokens_per_step = train.batch_size * train.seq_len * train.grad_accum_steps
        self.stage_flops = ([stage_cost(arch, train.seq_len)[1] for _, arch in spec.stage_archs()]
                            if isinstance(spec.model, FamilyModelSpec) else None)
        self.fingerprint = spec_fingerprint(spec.to_dict())
        self.resumed_from: int | None = None
        self._reshard_seconds = 0.0  # the last event's re-shard (FSDP), for wrap_seconds
        payload = self._latest_checkpoint() if resume else None
        self.state = self._initial_state() if payload is None else self._resumed_state(payload)
        self._view: nn.Module = self.state.model  # the model split before its head, or itself
        self._wrapper: nn.Module = self.state.model  # the view wrapped for this process group
        self._rewrap()

    def _initial_state(self) -> RunState:
        """The step-0 model (seeded init) and optimizer; a fresh run directory."""
        model = self._initial_model()
        growth = self._growth(*self._sharded(model, build_optimizer(model, self.spec.train)))
        self._fork_rng(0)
        metrics = MetricsLog(self._fresh_metrics_file([]))
        return RunState(growth, metrics)

    def _growth(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> msgc.Growth:
        """The spec's schedule over `model`: grown on this run's batches, new weights seeded
        from the run's seed, every event on the unsharded state."""
        rows = self.spec.train.batch_size if self.fixed_batch else 2
        return msgc.Growth(self.spec.growth, model, optimizer,
                           lambda step: self._example_inputs(step, rows),
                           train=self.spec.train, seed=self.spec.train.seed,
                           unshard=self._unshard, reshard=self._reshard)

    def _initial_model(self) -> nn.Module:
        torch.manual_seed(self.spec.train.seed)
        return make_model(self.spec).to(self.device).train()

    def _fresh_metrics_file(self, rows: list[dict[str, Any]]) -> Path | None:
        """The run directory's spec.yaml and metrics.jsonl, the latter holding `rows` (rank 0
        only: other ranks write nothing)."""
        if not self._writes:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.spec.dump(self.out_dir / "spec.yaml")
        path = self.out_dir / "metrics.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    def _claim_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Refuse to overwrite a run or to resume none (rank 0 looks, every rank raises)."""
        problem = None
        if self.parallel.is_main:
            try:
                prepare_run_dir(self.out_dir, resume, overwrite)
            except RunDirError as exc:
                problem = str(exc)
        problem = self.parallel.broadcast(problem)
        if problem is not None:
            raise RunDirError(problem)

    # --- checkpoints ---------------------------------------------------------------------

    @property
    def _writes(self) -> bool:
        """Whether this process writes the run directory (rank 0 of a run with one)."""
        return self.out_dir is not None and self.parallel.is_main

    def _latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest valid checkpoint, read by rank 0 and sent to every rank."""
        if self.out_dir is None:
            raise CheckpointError("resume needs the run directory (--out)")
        payload = self._read_latest() if self.parallel.is_main else None
        return self.parallel.broadcast(payload)

    def _read_latest(self) -> dict[str, Any] | None:
        payload, skipped = load_latest(self.out_dir, self.fingerprint)
        for reason in skipped:
            print(f"warning: skipping checkpoint {reason}", file=sys.stderr)
        if payload is None and self.progress:
            print(f"no checkpoint in {self.out_dir}: starting from step 0", file=sys.stderr)
        return payload

    def _structure(self, stage: int, grown: bool) -> nn.Module:
        """A model with the structure after `stage` growth events (still ramping if `grown`):
        the schedule's growth events replayed on a fresh model. Leaves the RNG as it was."""
        with torch.random.fork_rng(devices=[]):
            model = self._initial_model()
        return self.state.growth.structure(model, stage, grown)

    def _resumed_state(self, payload: dict[str, Any]) -> RunState:
        """The loop state of a checkpoint: structure replayed, then weights and state loaded."""
        with torch.random.fork_rng(devices=[]):
            model = self._initial_model()
        growth = self._growth(model, build_optimizer(model, self.spec.train))
        growth.load_state_dict({key: payload[key] for key in ("stage", "ramp_start", "grown")}
                               | {"events": []})
        growth.model.load_state_dict(payload["model"])
        growth.optimizer.load_state_dict(payload["optimizer"])
        growth.replace(*self._sharded(growth.model, growth.optimizer))
        self.precision.scaler.load_state_dict(payload["scaler"])
        self._restore_rng(payload)
        self.resumed_from = payload["step"]
        metrics = MetricsLog(self._fresh_metrics_file(payload["metrics"]), payload["metrics"])
        return RunState(growth, metrics, step=payload["step"], tokens=payload["tokens"],
                        flops=payload["flops"], seconds=payload["seconds"])

    def checkpoint(self) -> Path | None:
        """Write a checkpoint of the state after the last step (run directory only).

        Every rank calls it (the full state and the ranks' RNG states are gathered); rank 0
        writes the unwrapped model's full state, the full optimizer state and each rank's RNG.
        """
        if self.out_dir is None:
            return None
        model, optimizer = self._gathered()
        payload = capture(self.state, model, optimizer, self.precision.scaler)
        rank_rngs = self.parallel.gather_objects(payload["rng"])
        if not self._writes:
            return None
        if self.parallel.distributed:
            payload["rank_rng"] = rank_rngs
        return write_checkpoint(self.out_dir, self.state.step, payload, self.fingerprint,
                                keep=self.spec.train.keep_checkpoints)

    def _fork_rng(self, step: int) -> None:
        """Give ranks other than 0 their own RNG stream (dropout) from the run's seed."""
        if self.parallel.rank > 0:
            torch.manual_seed(rank_seed(self.spec.train.seed, step, self.parallel.rank))

    def _restore_rng(self, payload: dict[str, Any]) -> None:
        """This rank's RNG state from a checkpoint; a rank the writer did not have forks."""
        states = payload.get("rank_rng") or [payload["rng"]]
        if self.parallel.rank < len(states):
            restore_rng(states[self.parallel.rank])
        else:
            restore_rng(payload["rng"])
            self._fork_rng(payload["step"])

    def _checkpoint_due(self, structure_changed: bool) -> bool:
        every = self.spec.train.checkpoint_every
        step = self.state.step
        return (structure_changed or step == self.spec.train.steps
                or (every is not None and step % every == 0))

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train every remaining step, evaluate, write the outputs; the run's figures."""
        steps = self.spec.train.steps
        bar = progress_display(steps, self.state.step, self.spec.name, self.progress)
        with bar:
            while self.state.step < steps:
                row = self.train_step()
                bar.set_postfix(loss=f"{row['loss']:.3f}", stage=row["stage"],
                                mask=f"{row['mask']:.2f}", refresh=False)
                bar.update()
        return self.finish()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step with its structure changes and evaluation; its metrics row."""
        state, train = self.state, self.spec.train
        step = state.step
        start = time.perf_counter()
        stage_before, model_before = state.stage, state.model
        events = self._advance_ramp(step)
        growth = self._grow(step)
        state.growth.apply_learning_rate(step)
        loss = self._optimize(step)
        self._synchronize()
        state.seconds += time.perf_counter() - start
        state.step += 1
        state.tokens += self.tokens_per_step
        state.flops += self._flops_per_token(step) * self.tokens_per_step
        row = {
            "step": step, "loss": loss, "time": state.seconds, "tokens": state.tokens,
            "flops": state.flops, "lr": state.growth.learning_rate(step),
            "stage": state.stage, "mask": state.growth.mask_at(step),
            "params": count_parameters(state.model), **events, **growth,
        }
        if state.step == train.steps:
            row |= self._advance_ramp(state.step)  # the last ramp ends with the run: fold
        if state.step % train.eval_every == 0 or state.step == train.steps:
            row |= _prefixed("val", self.evaluate("val", train.eval_batches))
        if state.step == train.steps:
            row |= _prefixed("test", self.evaluate("test"))
        state.metrics.append(row)
        if self._checkpoint_due(state.stage != stage_before or state.model is not model_before):
            self.checkpoint()
        return row

    def finish(self) -> RunResult:
        """The run's figures; with a run directory, the final model, summary and plot."""
        state, metrics = self.state, self.state.metrics
        result = RunResult(
            name=self.spec.name, steps=state.step, params=count_parameters(state.model),
            wall_seconds=state.seconds, flops=state.flops, tokens=state.tokens,
            val_loss=metrics.last("val_loss"), val_bpb=metrics.last("val_bpb"),
            test_loss=metrics.last("test_loss"), test_bpb=metrics.last("test_bpb"),
            rows=metrics.rows,
        )
        if self.out_dir is not None:
            model = self._gathered()[0]  # every rank takes part in gathering shards
            if self._writes:
                self._write_outputs(result, model)
        return result

    def evaluate(self, split: str, max_batches: int | None = None) -> Evaluation:
        """Loss and bits per byte of the current model on `split` (every rank evaluates the
        whole split, so every rank gets the same figures), through the fused head where the
        training view has one, so no (rows, vocab) logits are made."""
        return self.task.evaluate(self._view, split, max_batches, self.device,
                                  self.precision.autocast)

    # --- structure: growth, ramp, fold ----------------------------------------------------

    def _advance_ramp(self, step: int) -> dict[str, float]:
        """Set the ramping masks for `step`; fold them once they reach 1 (then the fold's
        wall time, re-wrap included, as ``fold_seconds``)."""
        start = time.perf_counter()
        if self.state.growth.ramp_step(step) is None:
            return {}
        self._rewrap()
        return {"fold_seconds": time.perf_counter() - start}

    def _grow(self, step: int) -> dict[str, float]:
        """Grow if a stage starts at `step`, and check that the loss is preserved.

        ``grow_seconds`` is the growth event's wall time (gather, grow, state move, re-wrap),
        ``wrap_seconds`` its re-shard and re-wrap alone.
        """
        if step not in self.state.growth.stages:
            return {}
        inputs, targets = (t.to(self.device) for t in self.task.train_batch(
            step * self.spec.train.grad_accum_steps))
        before = self._exact_loss(inputs, targets)
        start = time.perf_counter()
        self.state.growth.grow_step(step)
        wrap_start = time.perf_counter()
        self._rewrap()
        end = time.perf_counter()
        after = self._exact_loss(inputs, targets)
        self._check_preserved(step, before, after)
        return {"loss_before": before[1], "loss_after": after[1], "grow_seconds": end - start,
                "wrap_seconds": end - wrap_start + self._reshard_seconds}

    def _check_preserved(self, step: int, before: tuple[float, float],
                         after: tuple[float, float]) -> None:
        """Raise PreservationError on every rank if the loss moved on any rank."""
        failed = not math.isclose(after[0], before[0], rel_tol=PRESERVATION_RTOL)
        failures = self.parallel.count(int(failed))
        if not failures:
            return
        where = (f" on {failures} of {self.parallel.world_size} ranks"
                 if self.parallel.distributed else "")
        (_, old), (_, new) = before, after
        raise PreservationError(
            f"growth at step {step} changed the loss from {old!r} to {new!r}{where} "
            f"(relative {abs(new - old) / abs(old):.2e} > {PRESERVATION_RTOL:g})"
        )

    def _exact_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """The model's loss on this rank's rows of a batch and its mean over all ranks' rows,
        in eval mode (no dropout) and fp32."""
        model = self.state.model
        model.eval()
        with torch.no_grad():
            loss = float(self.task.loss(model, inputs, targets))
        model.train()
        scored = int((targets != IGNORE_INDEX).sum())
        if not scored:  # a rank whose MLM rows hold no masked token: nothing to compare
            loss = 0.0
        return loss, self.parallel.mean(loss, weight=scored)

    # --- processes: wrapping and sharding ------------------------------------------------

    def _rewrap(self) -> None:
        """Wrap the current model for forward and backward (DDP; else the model itself),
        split before its LM head where ``train.fused_head`` allows (msgc.train.lm_head)."""
        self._view = self._wrapper = self.state.model  # drop the old ones before new ones
        self._view = self._training_view()
        self._wrapper = self.parallel.wrap(self._view, self.device)

    def _training_view(self) -> nn.Module:
        """The current model split before its head, sharing its parameters; the model itself
        where it cannot be split, under FSDP (which shards the model in place) and for
        Hugging Face models (torch.export fixes their batch size)."""
        model = self.state.model
        if not self.spec.train.fused_head or self.parallel.sharded or self.fixed_batch:
            return model
        view = head_split(model, self._example_inputs(self.state.step))
        return model if view is None else view

    def _example_inputs(self, step: int, rows: int = 2) -> tuple[torch.Tensor, ...]:
        """The model's arguments for the first `rows` rows of step `step`'s first global
        micro-batch (the same on every rank), on the run's device: what tracing runs."""
        inputs, targets = self.task.example_batch(step * self.spec.train.grad_accum_steps, rows)
        return self.task.model_inputs(inputs.to(self.device), targets.to(self.device))

    def _sharded(self, model: nn.Module, optimizer: torch.optim.Optimizer
                 ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """`model` and `optimizer` sharded under FSDP (else as they are)."""
        return self.parallel.shard(model, optimizer, self.spec.train, self.device)

    def _gathered(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The current model and optimizer, unsharded under FSDP (every rank must call)."""
        return self._unshard(self.state.model, self.state.optimizer)

    def _unshard(self, model: nn.Module, optimizer: torch.optim.Optimizer
                 ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """`model` (the current structure) and `optimizer`, unsharded under FSDP."""
        stage, grown = self.state.stage, isinstance(model, msgc.GrownModule)
        return self.parallel.gather(model, optimizer, lambda: self._structure(stage, grown),
                                    self.spec.train)

    def _reshard(self, model: nn.Module, optimizer: torch.optim.Optimizer
                 ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """`model` and `optimizer` sharded again after an event (timed for the metrics)."""
        start = time.perf_counter()
        sharded = self._sharded(model, optimizer)
        self._reshard_seconds = time.perf_counter() - start
        return sharded

    # --- one optimizer step --------------------------------------------------------------

    def _optimize(self, step: int) -> float:
        """Accumulate the step's micro-batches, clip, step AdamW; the mean micro-batch loss."""
        state, train, scaler = self.state, self.spec.train, self.precision.scaler
        model, optimizer = state.model, state.optimizer
        total = torch.zeros((), device=self.device)
        for micro in range(train.grad_accum_steps):
            inputs, targets = self.task.train_batch(step * train.grad_accum_steps + micro)
            last = micro == train.grad_accum_steps - 1
            with self._gradient_sync(last), self.precision.autocast():
                loss = self._micro_loss(inputs.to(self.device), targets.to(self.device))
                loss = loss / train.grad_accum_steps
                scaler.scale(loss).backward()
            total += loss.detach()
        mean = self.parallel.mean(float(total))
        if not math.isfinite(mean):
            raise TrainingDivergedError(
                f"the training loss is {mean} at step {step}; stopping. "
                f"{self._last_checkpoint_note()} Lower the learning rate or check the data."
            )
        if train.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return mean

    def _micro_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """This rank's loss on a micro-batch, through the wrapper. With several processes it is
        the sum over this rank's scored targets times ``world_size / (all ranks' count)``, so
        the gradients the wrapper averages are those of the global batch's mean loss."""
        if not self.parallel.distributed:
            return self.task.loss(self._wrapper, inputs, targets)
        scale = self.parallel.sum_scale(targets, IGNORE_INDEX)
        return self.task.loss(self._wrapper, inputs, targets, reduction="sum") * scale

    def _gradient_sync(self, sync: bool) -> AbstractContextManager:
        """Backward in the block reduces gradients across ranks only when `sync`."""
        return self.parallel.gradient_sync(self._wrapper, sync)

    def _last_checkpoint_note(self) -> str:
        if self.out_dir is None:
            return "No run directory, so no checkpoint was kept."
        found = list_checkpoints(self.out_dir)
        if not found:
            return "No checkpoint was written yet."
        return (f"The last good checkpoint (step {found[-1].step}) is kept in "
                f"{found[-1].payload.parent}.")

    def _flops_per_token(self, step: int) -> int:
        """Training FLOPs per token of the architecture in force at `step` (for models
        without a reference family: 6 x parameters, embeddings included)."""
        if self.stage_flops is None:
            return 6 * count_parameters(self.state.model)
        return self.stage_flops[self.spec.stage_index_at(step)]

    def _synchronize(self) -> None:
        """Wait for the device, so wall times measure the work done."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- outputs -------------------------------------------------------------------------

    def _write_outputs(self, result: RunResult, model: nn.Module) -> None:
        """model.safetensors (`model`: the final, unsharded model) + model.json, summary.json
        and loss.png in the run directory."""
        out = self.out_dir
        save_model(model, str(out / "model.safetensors"))
        final_arch = self.spec.arch_at(self.spec.train.steps)
        if isinstance(final_arch, FamilyModelSpec):
            (out / "model.json").write_text(
                json.dumps(final_arch.model_dump(mode="json"), indent=2) + "\n",
                encoding="utf-8")
        if isinstance(self.spec.model, HFModelSpec):
            self._export_hf(model, out / "hf")
        if isinstance(self.spec.model, CustomModelSpec):
            self._emit_custom(model, out / "model")
        (out / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n",
                                          encoding="utf-8")
        plot_runs({self.spec.name: result.rows}, out / "loss.png", title=self.spec.name)


    def _emit_custom(self, model: nn.Module, folder: Path) -> None:
        """The final model of a custom run as a standalone module: ``model.py`` (plain
        PyTorch, no msgc import) and ``weights.safetensors``."""
        example = self.task.example_batch(0)[0].to(self.device)  # (2, T) token ids
        emit_module(to_ir(model, (example,)), folder, class_name="TrainedModel",
                    title=f"{self.spec.name}: the final model of an msgc training run.")

    def _export_hf(self, model: nn.Module, path: Path) -> None:
        """The final model of a Hugging Face run as a save_pretrained checkpoint."""
        if isinstance(model, HFLogits):  # never grown: the HF model itself
            model.hf.save_pretrained(path)
            return
        torch.manual_seed(self.spec.train.seed)
        like = make_model(self.spec).hf
        export_hf(model, like, path, prefix="hf.")


def _prefixed(prefix: str, evaluation: Evaluation) -> dict[str, float]:
    """{"<prefix>_loss": ..., "<prefix>_bpb": ...}."""
    return {f"{prefix}_loss": evaluation.loss, f"{prefix}_bpb": evaluation.bpb}
