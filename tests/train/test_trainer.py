"""Tests for the training runtime: the loop across growth events, run outputs, compare."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_model

from msgc import kernels
from msgc.cli import main
from msgc.models import build_model, count_parameters
from msgc.spec import FamilyModelSpec, Spec, parse_spec
from msgc.train import task as task_module
from msgc.train.compare import compare_report, rescale, scratch_spec
from msgc.train.data import prepare_data
from msgc.train.metrics import read_metrics
from msgc.train.optim import learning_rate
from msgc.train.task import Task
from msgc.train.trainer import RunResult, Trainer

ROW_KEYS = {"step", "loss", "time", "tokens", "flops", "lr", "stage", "mask", "params"}
MODELS = {
    "gpt2": {"family": "gpt2", "hidden": 32, "heads": 2, "head_dim": 16, "ffn": 64, "layers": 2},
    "llama": {"family": "llama", "hidden": 32, "heads": 4, "kv_heads": 2, "head_dim": 8,
              "ffn": 64, "layers": 2},
    "bert": {"family": "bert", "hidden": 32, "heads": 2, "head_dim": 16, "ffn": 64, "layers": 2},
}
# width + heads first, then FFN and depth together: every dimension grows
STAGES = [{"step": 4, "hidden": 48, "heads": 3}, {"step": 8, "ffn": 96, "layers": 3}]


def make_spec(text_file: Path, family: str = "gpt2", stages: list[dict] | None = None,
              **train: Any) -> Spec:
    model = MODELS[family] | {"vocab_size": 260, "max_seq_len": 32, "dropout": 0.1}
    return parse_spec({
        "name": f"tiny-{family}",
        "model": model,
        "growth": {"ramp_steps": 3, "stages": STAGES if stages is None else stages},
        "train": {"steps": 12, "batch_size": 4, "seq_len": 32, "warmup_steps": 2,
                  "eval_every": 4, "eval_batches": 2, "tokenizer": "byte",
                  "data": str(text_file), **train},
    })


def run(spec: Spec, cache: Path, out_dir: Path | None = None) -> tuple[Trainer, Any]:
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    trainer = Trainer(spec, tokenizer, data, out_dir, progress=False)
    return trainer, trainer.run()


def final_arch(spec: Spec) -> FamilyModelSpec:
    return spec.arch_at(spec.train.steps)


def _logits(model: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    """The model's outputs in eval mode (no dropout); it is left in train mode, as in a run."""
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
    model.train()
    return out


def observe_growth(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str | float, torch.Tensor]]:
    """Logits around each growth event of the test's run (a Trainer's, the CLI's too), filled
    in as it runs: "before" of the model just before the event, 0.0 and 1.0 of the grown model
    at masks 0 and 1, before any update. Inputs: rows of batch 0, which the growth's own check
    never sees. The run itself goes on unchanged (eval mode draws no random numbers)."""
    seen: dict[int, dict[str | float, torch.Tensor]] = {}
    grow = Trainer._grow

    def observed(trainer: Trainer, step: int) -> dict[str, float]:
        if step not in trainer.state.growth.stages:
            return grow(trainer, step)
        inputs = trainer.task.model_inputs(*trainer.task.example_batch(0))
        before = _logits(trainer.state.model, inputs)
        event = grow(trainer, step)
        grown = trainer.state.model
        seen[step] = {"before": before, 0.0: _logits(grown, inputs)}
        grown.set_masks(1.0)
        seen[step][1.0] = _logits(grown, inputs)
        grown.set_masks(0.0)
        return event

    monkeypatch.setattr(Trainer, "_grow", observed)
    return seen


def assert_preserved(seen: dict[int, dict[str | float, torch.Tensor]], steps: list[int]) -> None:
    """Growth at `steps`, each leaving the logits as they were at masks 0 (not at masks 1)."""
    assert sorted(seen) == steps
    for step, logits in seen.items():
        torch.testing.assert_close(logits[0.0], logits["before"], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, s=step: f"growth at step {s}, masks 0: {m}")
        assert not torch.allclose(logits[1.0], logits["before"], rtol=1e-3, atol=1e-3), step


def test_two_growth_events_preserve_the_function_and_reach_the_final_size(
    text_file: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(text_file)
    seen = observe_growth(monkeypatch)
    trainer, result = run(spec, cache, tmp_path / "run")
    assert_preserved(seen, [4, 8])
    rows = result.rows
    assert [row["step"] for row in rows] == list(range(12))
    assert all(ROW_KEYS <= set(row) for row in rows)
    assert [row["step"] for row in rows if "loss_before" in row] == [4, 8]
    # masks ramp k / ramp_steps after each growth, then the model is plain again
    assert [row["mask"] for row in rows] == [1, 1, 1, 1, 0, 1 / 3, 2 / 3, 1, 0, 1 / 3, 2 / 3, 1]
    assert [row["stage"] for row in rows] == [0] * 4 + [1] * 4 + [2] * 4
    assert result.params == count_parameters(build_model(final_arch(spec)))
    assert rows[3]["params"] < rows[4]["params"] < rows[8]["params"] == result.params
    assert rows[-1]["tokens"] == 12 * 4 * 32
    flops = [row["flops"] for row in rows]
    assert all(b - a > 0 for a, b in zip(flops, flops[1:], strict=False))
    assert {row["step"] for row in rows if "val_loss" in row} == {3, 7, 11}
    assert math.isfinite(result.test_bpb) and result.val_loss == rows[-1]["val_loss"]
    assert not hasattr(trainer.state.model, "set_masks")  # folded at the end


def test_ramps_run_the_fused_kernels_unless_the_spec_says_not_to(
    text_file: Path, cache: Path
) -> None:
    spec = make_spec(text_file, stages=STAGES[:1], steps=8)
    losses, fused_ops = {}, {}
    for fuse in (True, False):
        grown = spec.model_copy(update={"growth": spec.growth.model_copy(update={"fuse": fuse})})
        tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
        trainer = Trainer(grown, tokenizer, data, None, progress=False)
        losses[fuse] = [trainer.train_step()["loss"] for _ in range(6)]  # growth at step 4
        model = trainer.state.model
        assert 0 < model.mask_value < 1  # mid-ramp
        fused_ops[fuse] = sum(n.target in (kernels.masked_linear, kernels.masked_norm)
                              for n in model.graph.nodes)
    assert fused_ops[True] > 0 and fused_ops[False] == 0
    assert losses[True][:5] == losses[False][:5]  # the same model until the growth step
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_the_fused_head_trains_as_the_plain_head(family: str, text_file: Path,
                                                 cache: Path) -> None:
    """train.fused_head: the same run (two growth events, ramps, folds) up to rounding."""
    stages = STAGES
    if family == "llama":  # GQA: 2 query heads per kv head, before and after
        stages = [STAGES[0] | {"heads": 8, "kv_heads": 4}, STAGES[1]]
    spec = make_spec(text_file, family, stages=stages)
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"dropout": 0.0})})
    results, wrappers = {}, {}
    for fused in (True, False):
        variant = spec.model_copy(update={"train": spec.train.model_copy(
            update={"fused_head": fused})})
        tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
        trainer = Trainer(variant, tokenizer, data, None, progress=False)
        wrappers[fused] = type(trainer._wrapper).__name__
        results[fused] = trainer.run()
    assert wrappers[True] == "HeadSplit" and wrappers[False] != "HeadSplit"
    losses = {fused: [row["loss"] for row in r.rows] for fused, r in results.items()}
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-6)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=0)
    assert results[True].test_bpb == pytest.approx(results[False].test_bpb, rel=1e-4)


def test_evaluation_runs_the_fused_head_mid_ramp(text_file: Path, cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation goes through linear_cross_entropy (no (rows, vocab) logits) and gives the
    plain model's figures."""
    spec = make_spec(text_file, stages=STAGES[:1], steps=8)
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    trainer = Trainer(spec, tokenizer, data, None, progress=False)
    for _ in range(6):  # growth at step 4: mid-ramp now
        trainer.train_step()
    calls = []
    fused = task_module.linear_cross_entropy

    def counted(*args: Any) -> torch.Tensor:
        calls.append(args[0].shape)  # hidden: (rows, d)
        return fused(*args)

    monkeypatch.setattr(task_module, "linear_cross_entropy", counted)
    evaluation = trainer.evaluate("val", max_batches=2)
    assert len(calls) == 2
    plain = trainer.task.evaluate(trainer.state.model, "val", max_batches=2)
    assert evaluation.loss == pytest.approx(plain.loss, rel=1e-6)
    assert evaluation.bpb == pytest.approx(plain.bpb, rel=1e-6)
    assert len(calls) == 2  # the plain model made its logits itself


def test_run_directory(text_file: Path, cache: Path, tmp_path: Path) -> None:
    spec = make_spec(text_file, stages=STAGES[:1], steps=8)
    out = tmp_path / "run"
    trainer, result = run(spec, cache, out)
    assert {p.name for p in out.iterdir()} == {"spec.yaml", "metrics.jsonl", "model.safetensors",
                                             "model.json", "summary.json", "loss.png",
                                             "checkpoints"}
    assert read_metrics(out / "metrics.jsonl") == json.loads(json.dumps(result.rows))
    assert json.loads((out / "summary.json").read_text())["test_bpb"] == result.test_bpb
    # the saved weights load into the reference model of the final architecture
    arch = FamilyModelSpec.model_validate(json.loads((out / "model.json").read_text()))
    assert arch == final_arch(spec)
    reference = build_model(arch).eval()
    load_model(reference, str(out / "model.safetensors"))
    ids = torch.randint(0, 260, (2, 16))
    trainer.state.model.eval()
    torch.testing.assert_close(reference(ids), trainer.state.model(ids))


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_growth_preserves_the_function_in_other_families(
    family: str, text_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = [{"step": 3, "hidden": 48, "heads": 4, "ffn": 96, "layers": 3}]
    if family == "llama":  # GQA: 2 query heads per kv head, before and after
        stages[0] |= {"heads": 8, "kv_heads": 4}
    spec = make_spec(text_file, family, stages=stages, steps=7, eval_every=7)
    seen = observe_growth(monkeypatch)
    _, result = run(spec, cache)
    assert_preserved(seen, [3])
    assert result.params == count_parameters(build_model(final_arch(spec)))


def test_gradient_accumulation_counts_optimizer_steps(text_file: Path, cache: Path) -> None:
    spec = make_spec(text_file, grad_accum_steps=3)
    _, result = run(spec, cache)
    rows = result.rows
    assert len(rows) == 12
    assert [row["step"] for row in rows if "loss_before" in row] == [4, 8]
    assert [row["mask"] for row in rows[4:8]] == [0, 1 / 3, 2 / 3, 1]
    assert rows[-1]["tokens"] == 12 * 3 * 4 * 32


def test_causal_bits_per_byte_cover_the_split(text_file: Path, cache: Path) -> None:
    tokenizer, data = prepare_data(str(text_file), "byte", 260, cache)
    task = Task(tokenizer, data, batch_size=4, seq_len=32, seed=0, mlm=False)
    model = build_model(final_arch(make_spec(text_file)))
    evaluation = task.evaluate(model, "val")
    nll_per_token = evaluation.loss
    tokens = len(data.val) - 1  # byte tokens: one byte per scored target
    assert data.scored_bytes["val"] == tokens
    assert evaluation.bpb == pytest.approx(nll_per_token / math.log(2))


def test_rescale_and_scratch_spec(text_file: Path) -> None:
    spec = make_spec(text_file)
    longer = rescale(spec, 1.5)
    assert longer.train.steps == 18 and longer.train.warmup_steps == 3
    assert [stage.step for stage in longer.growth.stages] == [6, 12]
    assert longer.growth.ramp_steps == 4
    scratch = scratch_spec(spec)
    assert scratch.growth.stages == [] and scratch.model == final_arch(spec)
    assert scratch.train == spec.train


def test_learning_rate_multiplier_moves_with_the_masks(text_file: Path, cache: Path) -> None:
    stages = [{"step": 4, "hidden": 48, "heads": 3, "lr_scale": 1.5}, {"step": 8, "ffn": 96}]
    spec = make_spec(text_file, stages=stages, schedule="constant", lr=0.01, warmup_steps=0)
    spec.growth.lr_scale = 3.0
    assert spec.growth.lr_scales() == [3.0, 1.5, 1.5]  # the second stage keeps the first's
    trainer, result = run(spec, cache)
    lrs = [row["lr"] for row in result.rows]
    # start x3; over the 3-step ramp from step 4 the masks go 0, 1/3, 2/3 and so does the
    # multiplier, from 3 to 1.5; then x1.5
    expected = [0.03] * 5 + [0.025, 0.02] + [0.015] * 5
    assert lrs == pytest.approx(expected)
    assert trainer.state.optimizer.param_groups[0]["lr"] == pytest.approx(0.015)
    assert scratch_spec(spec).growth.lr_scales() == [1.5]  # scratch trains at the final rate


def test_a_stage_restarts_the_decay_and_the_rate_moves_there_with_the_masks(
        text_file: Path, cache: Path) -> None:
    stages = [{"step": 4, "hidden": 48, "heads": 3, "lr_restart": 1.0}, {"step": 8, "ffn": 96}]
    spec = make_spec(text_file, stages=stages, schedule="linear", lr=0.01, warmup_steps=0)
    assert spec.growth.lr_restarts() == [None, (4, 1.0), (4, 1.0)]
    trainer, result = run(spec, cache)
    lrs = [row["lr"] for row in result.rows]
    plain = [learning_rate(s, spec.train) for s in range(12)]  # 0.01 -> 0.001 over 12 steps
    restarted = [learning_rate(s, spec.train, (4, 1.0)) for s in range(12)]
    assert restarted[4] == pytest.approx(0.01) and restarted[11] == pytest.approx(0.001)
    ramp = [plain[s] + c * (restarted[s] - plain[s]) for s, c in zip(
        range(4, 7), (0, 1 / 3, 2 / 3), strict=True)]  # the masks' 3-step ramp from step 4
    assert lrs == pytest.approx(plain[:4] + ramp + restarted[7:])
    assert scratch_spec(spec).growth.lr_restarts() == [None]  # scratch: the plain schedule


def test_the_report_compares_msg_with_scratch(text_file: Path) -> None:
    """The report's figures from known runs (no measured time: wall seconds are given)."""
    spec = make_spec(text_file, stages=STAGES[:1], steps=8)
    runs = {  # label: (wall seconds, FLOPs, final val loss, test bpb)
        "scratch": (300.0, 60, 4.0, 2.0), "msg": (100.0, 20, 4.2, 2.02),
        "msg_x1.25": (150.0, 25, 4.1, 2.01), "msg_x1.5": (200.0, 30, 3.9, 1.99),
        "msg_x2": (250.0, 40, 3.8, 1.98),
    }
    results = {label: RunResult(name=label, steps=8, params=1, wall_seconds=wall, flops=flops,
                                tokens=1, val_loss=val, val_bpb=0.0, test_loss=0.0,
                                test_bpb=bpb)
               for label, (wall, flops, val, bpb) in runs.items()}
    report = compare_report(spec, results, None, match_quality=True)
    assert report["speedup_wall"] == pytest.approx(3.0)
    assert report["speedup_flops"] == pytest.approx(3.0)
    assert report["bpb_gap"] == pytest.approx(0.01)
    # the shortest budget whose val loss reaches scratch's: x1.5 (x1.25 stays above it)
    assert report["target_run"] == "msg_x1.5"
    assert report["speedup_to_target"] == pytest.approx(1.5)
    assert report["plot"] is None


def test_compare_writes_the_report(text_file: Path, cache: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "tiny.yaml"
    make_spec(text_file, stages=STAGES[:1], steps=8).dump(spec_path)
    report_path = tmp_path / "report.json"
    status = main(["compare", str(spec_path), "--json", str(report_path),
                   "--out", str(tmp_path / "cmp"), "--match-quality"])
    assert status == 0
    report = json.loads(report_path.read_text())
    assert set(report["runs"]) == {"scratch", "msg", "msg_x1.25", "msg_x1.5", "msg_x2"}
    for run_report in report["runs"].values():
        assert {"wall_seconds", "flops", "val_loss", "test_bpb"} <= set(run_report)
    scratch, msg = report["runs"]["scratch"], report["runs"]["msg"]
    assert report["speedup_flops"] == pytest.approx(scratch["flops"] / msg["flops"])
    assert report["speedup_flops"] > 1
    assert report["bpb_gap"] == pytest.approx(msg["test_bpb"] / scratch["test_bpb"] - 1)
    assert "speedup_to_target" in report and Path(report["plot"]).is_file()
    assert report["runs"]["msg_x2"]["steps"] == 16
    out = capsys.readouterr().out
    assert "speedup (wall)" in out and "msg_x1.5" in out


def test_interleaved_compare_trains_each_arm_as_it_trains_alone(
        text_file: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Alternating blocks of 3 steps (dropout on): every loss and evaluation as in the
    one-after-the-other compare, which the same spec ran first."""
    spec_path = tmp_path / "tiny.yaml"
    make_spec(text_file, stages=STAGES[:1], steps=8).dump(spec_path)
    reports = {}
    for name, extra in (("sequential", []), ("interleaved", ["--interleave", "3"])):
        path = tmp_path / f"{name}.json"
        assert main(["compare", str(spec_path), "--json", str(path), *extra]) == 0
        reports[name] = json.loads(path.read_text())
    assert (reports["sequential"]["interleave"], reports["interleaved"]["interleave"]) == (None, 3)
    for arm in ("scratch", "msg"):
        runs = [reports[name]["runs"][arm] for name in reports]
        for key in ("steps", "flops", "val_loss", "test_loss", "test_bpb"):
            assert runs[0][key] == runs[1][key], (arm, key)
    assert "speedup (wall, interleaved)" in capsys.readouterr().out
    assert main(["compare", str(spec_path), "--interleave", "0"]) == 2
    assert "--interleave: a block is a positive number of steps" in capsys.readouterr().err
