"""The inspect, export and compile commands, run in-process like a user would."""

import json

import pytest
import torch
from safetensors.torch import save_model

from msgc.cli import main
from msgc.models import build_model
from msgc.spec import FamilyModelSpec


def test_inspect_spec_prints_groups_and_writes_dot(tmp_path, capsys):
    assert main(["inspect", "specs/gpt-tiny.yaml", "--dot", str(tmp_path / "g.dot")]) == 0
    out = capsys.readouterr().out
    for group in ("hidden", "ffn", "heads", "blocks"):
        assert group in out
    assert (tmp_path / "g.dot").read_text().startswith("graph msgc {")


def test_inspect_dot_into_a_missing_folder_is_an_msgc_error(tmp_path, capsys):
    target = tmp_path / "absent" / "g.dot"
    assert main(["inspect", "specs/gpt-tiny.yaml", "--dot", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --dot {target}: the folder {target.parent} does not exist")
    assert not target.parent.exists()


def test_inspect_needs_a_model(capsys):
    assert main(["inspect"]) == 2
    assert "give a spec file or --module" in capsys.readouterr().err


def test_compile_stage_writes_module(tmp_path, capsys):
    assert main(["compile", "specs/llama-tiny.yaml", "--stage", "1", "--out",
                 str(tmp_path)]) == 0
    assert (tmp_path / "model.py").exists() and (tmp_path / "weights.safetensors").exists()
    assert main(["compile", "specs/llama-tiny.yaml", "--stage", "99", "--out",
                 str(tmp_path)]) == 2
    assert "--stage" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_export_run_dir_to_hf(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    arch = FamilyModelSpec(family=family, vocab_size=50, max_seq_len=16, hidden=16, heads=2,
                           ffn=32, layers=2)
    run = tmp_path / "run"
    run.mkdir()
    model = build_model(arch).eval()
    save_model(model, str(run / "model.safetensors"))
    (run / "model.json").write_text(arch.model_dump_json())
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == family
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids), rtol=1e-5, atol=1e-5)


def test_export_needs_a_finished_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--hf", str(tmp_path / "hf")]) == 2
    assert "finished" in capsys.readouterr().err
