"""Tests for msgc.train.models: a user's own model (``model.module``) trained end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_model

from msgc.cli import main
from msgc.errors import SpecError
from msgc.spec import Spec, load_spec, parse_spec
from msgc.train.data import prepare_data
from msgc.train.metrics import read_metrics
from msgc.train.models import is_masked_lm, vocab_size
from msgc.train.trainer import Trainer
from tests.train.test_trainer import assert_preserved, observe_growth

ROOT = Path(__file__).resolve().parents[2]
FACTORY = "examples.parallel_gpt:build"  # parallel blocks: torch.fx cannot trace them
START = {"vocab_size": 260, "max_seq_len": 32, "hidden": 32, "heads": 2, "head_dim": 16,
         "ffn": 64, "layers": 2}
STAGES = [{"step": 4, "hidden": 48, "heads": 3}, {"step": 8, "ffn": 96, "layers": 3}]
FINAL = START | {"hidden": 48, "heads": 3, "ffn": 96, "layers": 3}


@pytest.fixture(autouse=True)
def from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """`examples.parallel_gpt` imports from the repository root, as in the README."""
    monkeypatch.chdir(ROOT)


def custom_spec(text_file: Path, module: str = FACTORY, kwargs: dict | None = None,
                **train: Any) -> Spec:
    return parse_spec({
        "name": "custom",
        "model": {"module": module, "kwargs": START if kwargs is None else kwargs,
                  "trust_code": True},
        "growth": {"ramp_steps": 3, "stages": STAGES},
        "train": {"steps": 12, "batch_size": 4, "seq_len": 32, "warmup_steps": 2,
                  "eval_every": 4, "eval_batches": 2, "tokenizer": "byte",
                  "data": str(text_file), **train},
    })


def build_final() -> torch.nn.Module:
    from examples.parallel_gpt import build

    return build(**FINAL).eval()


def emitted_model(folder: Path) -> torch.nn.Module:
    """`load()` of the standalone module a custom run writes."""
    module_spec = importlib.util.spec_from_file_location("emitted_model", folder / "model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.load().eval()


def test_a_custom_model_grows_on_schedule_and_ends_as_its_own_class(
    text_file: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_file = tmp_path / "custom.yaml"
    custom_spec(text_file).dump(spec_file)
    seen = observe_growth(monkeypatch)
    assert main(["train", str(spec_file), "--out", str(tmp_path / "run")]) == 0
    assert_preserved(seen, [4, 8])
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # the folded weights keep the user's parameter names: they load into the class at its
    # final size, and the standalone module computes the same logits
    final = build_final()
    load_model(final, str(tmp_path / "run" / "model.safetensors"))  # strict
    standalone = emitted_model(tmp_path / "run" / "model")
    ids = torch.randint(0, 260, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(standalone(ids), final(ids))
    assert rows[-1]["params"] == sum(p.numel() for p in final.parameters())


def test_a_custom_run_resumes_bitwise_mid_ramp(text_file: Path, cache: Path,
                                               tmp_path: Path) -> None:
    spec = custom_spec(text_file, checkpoint_every=1)
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    reference = Trainer(spec, tokenizer, data, tmp_path / "reference", progress=False).run()
    first = Trainer(spec, tokenizer, data, tmp_path / "run", progress=False)
    for _ in range(5):  # growth at 4, masks at 1/3
        first.train_step()
    resumed = Trainer(spec, tokenizer, data, tmp_path / "run", progress=False, resume=True)
    assert resumed.resumed_from == 5
    assert ([row["loss"] for row in resumed.run().rows]
            == [row["loss"] for row in reference.rows])


@pytest.mark.parametrize("module,kwargs,message", [
    ("torch.nn:Identity", {}, "returned a tensor of shape (1, 32)"),
    ("torch.nn:Linear", {"in_features": 3, "out_features": 3},
     "failed on token ids of shape (1, 32) (train.seq_len): RuntimeError"),
])
def test_a_model_that_does_not_map_ids_to_logits_is_refused(text_file: Path, module: str,
                                                             kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        vocab_size(custom_spec(text_file, module, kwargs))
    assert f"model.module: {module}" in str(caught.value)
    assert message in str(caught.value) and "logits (B, T, V)" in str(caught.value)


def test_the_vocabulary_of_a_custom_model_is_read_off_its_logits(text_file: Path) -> None:
    assert vocab_size(custom_spec(text_file, kwargs=START | {"vocab_size": 300})) == 300


@pytest.mark.parametrize("task,masked", [("causal", False), ("masked", True)])
def test_a_custom_model_trains_the_task_its_spec_names(text_file: Path, task: str,
                                                       masked: bool) -> None:
    spec = custom_spec(text_file).to_dict()
    spec["model"]["task"] = task
    assert is_masked_lm(parse_spec(spec)) is masked


def test_compare_refuses_a_custom_spec_before_preparing_data(
    text_file: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec_file = tmp_path / "custom.yaml"
    custom_spec(text_file).dump(spec_file)
    assert main(["compare", str(spec_file)]) == 2
    error = capsys.readouterr().err
    assert "cannot build for model.module" in error and "without growth stages" in error
    assert not cache.exists()  # refused before the tokenizer and token caches


def test_the_example_spec_names_a_model_msgc_can_train() -> None:
    spec = load_spec(ROOT / "examples" / "parallel-tiny.yaml")
    assert vocab_size(spec) == spec.model.kwargs["vocab_size"] == 4096
    assert spec.arch_at(spec.train.steps) == {"hidden": 256, "heads": 4, "ffn": 1024,
                                              "layers": 4}
