"""MSG against training the final model from scratch (the paper's protocol).

Both runs train on the same data order (the same `BatchSampler` seed) for the same number of
optimizer steps with the same learning-rate schedule, one after the other in one process,
or with ``interleave=N`` in alternating blocks of N steps (each arm with its own RNG state,
so the same losses), which makes the wall-clock ratio immune to the machine's speed drifting
between the runs.
The report (``compare``'s return value, written as JSON by ``msgc compare --json``)::

    {"spec": ..., "steps": ..., "device": ...,
     "runs": {"scratch": RUN, "msg": RUN, ["msg_x1.25": RUN, ...]},
     "speedup_wall": scratch wall / msg wall,  "speedup_flops": scratch FLOPs / msg FLOPs,
     "bpb_gap": msg test bpb / scratch test bpb - 1,
     ["speedup_to_target": scratch wall / wall of the shortest MSG budget whose final val loss
      is at or below scratch's (null if none), "target_run": its name],
     "interleave": N or null, "plot": path or null}

where each RUN is a `RunResult.summary()` (wall_seconds, flops, val_loss, val_bpb, test_bpb,
...). Wall time is training time, evaluation excluded. With ``match_quality`` the MSG
schedule also runs with budgets stretched by `STRETCHES` (total steps, stage steps, ramp and
warmup scaled together, so the learning-rate schedule stretches too): fresh runs, never a
finished run continued at its minimum learning rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from msgc.errors import SpecError
from msgc.spec import FamilyModelSpec, HFModelSpec, Spec, parse_spec
from msgc.train.data import TokenData
from msgc.train.plot import plot_runs
from msgc.train.precision import resolve_device
from msgc.train.resume import restore_rng, rng_states
from msgc.train.tokenizer import Tokenizer
from msgc.train.trainer import RunResult, Trainer

__all__ = ["STRETCHES", "compare", "compare_report", "interleaved", "rescale", "scratch_spec"]

STRETCHES = (1.25, 1.5, 2.0)
"""The longer MSG budgets ``--match-quality`` tries, as multiples of the spec's steps."""


def scratch_spec(spec: Spec) -> Spec:
    """`spec`'s final architecture with no growth, the same training run (at the final
    stage's learning-rate multiplier). A custom model's final size is unknown to msgc: a
    SpecError says how to train it by hand."""
    data = spec.to_dict()
    data["name"] = f"{spec.name}-scratch"
    data["model"] = _final_model_section(spec)
    data["growth"] = {**data["growth"], "stages": [], "lr_scale": spec.growth.lr_scales()[-1]}
    return parse_spec(data, source=f"{spec.name} (scratch)")


def _final_model_section(spec: Spec) -> dict[str, Any]:
    """The `model` section of `spec`'s model at its final size, with fresh weights."""
    final = spec.arch_at(spec.train.steps)
    if isinstance(final, FamilyModelSpec):
        return final.model_dump(mode="json")
    if isinstance(spec.model, HFModelSpec):
        from msgc.interop.hf_models import final_hf_section

        return final_hf_section(spec.model, final)
    raise SpecError(
        f"{spec.name}: compare trains the final architecture from scratch, which msgc cannot "
        "build for model.module (it does not know how your factory's kwargs map to sizes); "
        "write a spec of the final size without growth stages, `msgc train` both, and "
        "compare their summary.json"
    )


def rescale(spec: Spec, factor: float, name: str | None = None) -> Spec:
    """`spec` with its step budget scaled by `factor`: steps, stage steps, ramp and warmup.

    Stage steps and warmup are rounded; the ramp is rounded down and shortened where rounding
    would let it overlap the next stage (or the end of the run).
    """
    data = spec.to_dict()
    train, growth = data["train"], data["growth"]
    train["steps"] = max(1, round(train["steps"] * factor))
    train["warmup_steps"] = min(round(train["warmup_steps"] * factor), train["steps"] - 1)
    starts = [max(1, round(stage["step"] * factor)) for stage in growth["stages"]]
    for stage, start in zip(growth["stages"], starts, strict=True):
        stage["step"] = start
    gaps = [b - a for a, b in zip(starts, [*starts[1:], train["steps"]], strict=False)]
    growth["ramp_steps"] = max(1, min([math.floor(growth["ramp_steps"] * factor), *gaps]))
    data["name"] = name or spec.name
    try:
        return parse_spec(data, source=f"{spec.name} scaled by {factor:g}")
    except SpecError as exc:
        raise SpecError(f"{exc}\n(the schedule does not fit {train['steps']} steps; "
                        "choose a larger step budget)") from None


def compare(
    spec: Spec,
    tokenizer: Tokenizer,
    data: TokenData,
    out_dir: Path | None = None,
    match_quality: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    interleave: int | None = None,
) -> dict[str, Any]:
    """Train scratch, then MSG (and with `match_quality` the stretched MSG budgets); report.

    Each run writes `out_dir`/<label>; `overwrite` replaces runs already there. With
    `interleave` (a number of steps) the arms train in alternating blocks (`interleaved`)."""
    if not spec.growth.stages:
        raise SpecError(f"{spec.name}: growth.stages is empty, so there is nothing to compare; "
                        "add growth stages")
    specs = {"scratch": scratch_spec(spec), "msg": spec}
    if match_quality:
        specs |= {f"msg_x{f:g}": rescale(spec, f, f"{spec.name}-x{f:g}") for f in STRETCHES}

    def trainer(label: str, show_progress: bool) -> Trainer:
        run_dir = out_dir / label if out_dir is not None else None
        return Trainer(specs[label], tokenizer, data, run_dir, show_progress,
                       overwrite=overwrite)

    if interleave is None:
        results = {label: trainer(label, progress).run() for label in specs}
    else:  # each arm's RNG state as its own initialisation left it
        arms = {label: (trainer(label, False), rng_states()) for label in specs}
        results = interleaved(arms, interleave)
    report = compare_report(spec, results, out_dir, match_quality)
    report["interleave"] = interleave
    return report


def interleaved(arms: dict[str, tuple[Trainer, dict[str, Any]]],
                block: int) -> dict[str, RunResult]:
    """Train every arm (a trainer and its RNG state) in turns of `block` steps in this
    process, so a change in the machine's speed falls on all alike. Each arm carries its own
    RNG state (dropout) across the turns, so it trains exactly as it would alone."""
    trainers = {label: t for label, (t, _) in arms.items()}
    rngs = {label: rng for label, (_, rng) in arms.items()}
    while any(t.state.step < t.spec.train.steps for t in trainers.values()):
        for label, t in trainers.items():
            restore_rng(rngs[label])
            for _ in range(min(block, t.spec.train.steps - t.state.step)):
                t.train_step()
            rngs[label] = rng_states()
    return {label: t.finish() for label, t in trainers.items()}


def compare_report(spec: Spec, results: dict[str, RunResult], out_dir: Path | None,
            match_quality: bool) -> dict[str, Any]:
    """The comparison's figures (see the module doc)."""
    scratch, msg = results["scratch"], results["msg"]
    report: dict[str, Any] = {
        "spec": spec.name,
        "steps": spec.train.steps,
        "device": str(resolve_device(spec.train.device)),
        "runs": {label: result.summary() for label, result in results.items()},
        "speedup_wall": scratch.wall_seconds / msg.wall_seconds,
        "speedup_flops": scratch.flops / msg.flops,
        "bpb_gap": msg.test_bpb / scratch.test_bpb - 1,
    }
    if match_quality:
        reached = [label for label, result in results.items()
                   if label != "scratch" and result.val_loss <= scratch.val_loss]
        target = reached[0] if reached else None  # runs are listed shortest budget first
        report["speedup_to_target"] = (
            scratch.wall_seconds / results[target].wall_seconds if target else None)
        report["target_run"] = target
    plot = None
    if out_dir is not None:
        plot = plot_runs({label: r.rows for label, r in results.items()}, out_dir / "compare.png",
                         title=f"{spec.name}: MSG vs scratch")
    report["plot"] = str(plot) if plot else None
    return report
