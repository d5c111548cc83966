"""`msgc compile SPEC --stage N --out FILE.py`, run in-process like a user would."""

from msgc.cli import main
from msgc.interop.commands import stage_module
from msgc.spec import load_spec
from tests.interop.emitted import assert_same_function, import_module, ruff

SPEC = "specs/llama-tiny.yaml"


def test_compile_writes_a_short_clean_file_with_the_stage_logits(tmp_path, capsys):
    out = tmp_path / "llama_tiny.py"
    assert main(["compile", SPEC, "--stage", "2", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert (tmp_path / "llama_tiny.safetensors").exists()
    assert len(out.read_text().splitlines()) < 200
    lint = ruff(out)
    assert lint.returncode == 0, lint.stdout
    gm, _ = stage_module(load_spec(SPEC), 2)
    assert_same_function(gm, import_module(out).load(), 4096)


def test_compile_masked_writes_the_stage_mid_ramp(tmp_path):
    out = tmp_path / "ramp.py"
    assert main(["compile", SPEC, "--stage", "3", "--masked", "--mask-value", "0.25",
                 "--out", str(out)]) == 0
    model = import_module(out).load()
    assert float(model.masks.value) == 0.25
    grown, _ = stage_module(load_spec(SPEC), 3, mask=0.25)
    assert_same_function(grown, model, 4096)
    assert ruff(out).returncode == 0


def test_compile_masked_needs_a_stage_that_grows(tmp_path, capsys):
    assert main(["compile", SPEC, "--stage", "0", "--masked", "--out",
                 str(tmp_path / "m.py")]) == 2
    assert "stage 0" in capsys.readouterr().err
    assert not (tmp_path / "m.py").exists()
