"""Tests for the msgc command line (in-process through main, and once as `python -m msgc`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from msgc.cli import main
from msgc.models import build_model, count_parameters
from msgc.spec import load_spec
from msgc.train.flops import matmul_parameters, train_flops_per_token

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "specs").glob("*.yaml"))
GPT_TINY = REPO / "specs" / "gpt-tiny.yaml"

BAD_SPEC = """\
name: bad
model: {family: gpt2, vocab_size: 64, max_seq_len: 32, hidden: 32, heads: 2, ffn: 64,
        layers: 2}
growth:
  ramp_steps: 10
  stages: [{step: 20, hidden: 16}]
train: {steps: 100, seq_len: 16}
"""


@pytest.fixture
def bad_spec(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SPEC)
    return path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of main(argv)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_validate_good_specs(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(capsys, "validate", *SPECS)
    assert status == 0 and err == ""
    assert out.splitlines() == [f"OK {path}" for path in SPECS]


def test_validate_bad_spec(capsys: pytest.CaptureFixture[str], bad_spec: Path) -> None:
    status, out, err = run_main(capsys, "validate", GPT_TINY, bad_spec)
    assert status == 2
    assert out == f"OK {GPT_TINY}\n"
    assert err.startswith(f"error: {bad_spec}: growth.stages[0].hidden: ")
    assert "Traceback" not in err


UNTRUSTED_SPEC = """\
name: untrusted
model: {module: "os:getcwd"}
train: {steps: 100, seq_len: 16}
"""


def test_validate_refuses_untrusted_code(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    """What `msgc train` would refuse, `msgc validate` refuses, naming the field."""
    path = tmp_path / "untrusted.yaml"
    path.write_text(UNTRUSTED_SPEC)
    for command in ("validate", "train"):
        status, out, err = run_main(capsys, command, path, *(
            ["--out", tmp_path / "run"] if command == "train" else []))
        assert status == 2 and out == "", command
        assert err.startswith(f"error: {path}: model.trust_code: loading 'os:getcwd'"), command
    assert not (tmp_path / "run").exists()


def test_validate_normalises_torch_dtype_names(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    path = tmp_path / "dtype.yaml"
    text = GPT_TINY.read_text()
    path.write_text(text.replace("\ntrain:\n", "\ntrain:\n  dtype: torch.bfloat16\n", 1))
    status, out, _ = run_main(capsys, "validate", path)
    assert status == 0 and out == f"OK {path}\n"
    assert load_spec(path).train.dtype == "bf16"


def test_validate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run_main(capsys, "validate", tmp_path / "absent.yaml")
    assert status == 2 and "no such file" in err and "Traceback" not in err


def test_validate_malformed_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [x\nmodel: {\n")
    status, _, err = run_main(capsys, "validate", path)
    assert status == 2 and "malformed YAML: line" in err and "Traceback" not in err


def test_python_dash_m(bad_spec: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "msgc", "validate", str(GPT_TINY)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == f"OK {GPT_TINY}"
    bad = subprocess.run([sys.executable, "-m", "msgc", "validate", str(bad_spec)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_schema_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(capsys, "schema")
    assert status == 0
    assert {"name", "model", "growth", "train"} <= set(json.loads(out)["properties"])


def info_rows(out: str) -> list[list[str]]:
    """The table rows (header excluded) of `msgc info` output."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "step"])
    return [line.split() for line in lines[header + 1:] if line.split()[0].isdigit()]


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_info_prints_a_row_per_stage(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    status, out, _ = run_main(capsys, "info", path)
    spec = load_spec(path)
    rows = info_rows(out)
    assert status == 0
    assert [int(row[1]) for row in rows] == [step for step, _ in spec.stage_archs()]
    assert "training compute" in out


def test_info_values(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(capsys, "info", GPT_TINY)
    first, last = info_rows(out)[0], info_rows(out)[-1]
    assert first[:8] == ["0", "0", "128", "256", "2", "2", "64", "2"]
    assert last[:8] == ["3", "1760", "256", "1024", "4", "4", "64", "4"]
    full = build_model(load_spec(GPT_TINY).arch_at(1760))
    assert last[8] == f"{count_parameters(full) / 1e6:.3g}M"
    assert [row[-1] for row in info_rows(out)] == [
        f"{scale:g}" for scale in load_spec(GPT_TINY).growth.lr_scales()]


def test_info_custom_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("name: c\nmodel: {module: 'pkg.mod:make', trust_code: true}\n"
                    "growth: {ramp_steps: 5, stages: [{step: 10, hidden: 64}]}\n"
                    "train: {steps: 20}\n")
    status, out, _ = run_main(capsys, "info", path)
    rows = info_rows(out)
    assert status == 0 and len(rows) == 2
    assert rows[1][:3] == ["1", "10", "64"] and rows[1][3] == "?"


def test_info_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run_main(capsys, "info", tmp_path / "absent.yaml")
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err


def test_flops_count() -> None:
    spec = load_spec(GPT_TINY)
    gpt = spec.model
    model = build_model(gpt)
    # tied head: only the position table is a pure lookup
    assert matmul_parameters(model) == count_parameters(model) - gpt.max_seq_len * gpt.hidden
    attention = 2 * gpt.layers * 128 * gpt.heads * gpt.head_dim  # causal: half of 4 L T d
    assert train_flops_per_token(model, gpt, 128) == 3 * (2 * matmul_parameters(model) + attention)

    llama = load_spec(REPO / "specs" / "llama-tiny.yaml").model
    model = build_model(llama)
    # untied head: the token table is a pure lookup, the head a separate matmul
    assert matmul_parameters(model) == count_parameters(model) - llama.vocab_size * llama.hidden

    bert = load_spec(REPO / "specs" / "bert-tiny.yaml").model
    model = build_model(bert)
    d, v = bert.hidden, bert.vocab_size
    head = d * d + d + 2 * d + d * v + v  # dense, norm, tied decoder and its bias
    body = matmul_parameters(model) - head
    attention = 4 * bert.layers * 128 * bert.heads * bert.head_dim  # bidirectional
    # the MLM head runs at the 15% of positions that are predicted
    assert train_flops_per_token(model, bert, 128) == 3 * (2 * (body + round(0.15 * head))
                                                           + attention)


def test_demo(capsys: pytest.CaptureFixture[str], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo validates the bundled specs, then compares (here: a tiny spec, 6 steps)."""
    monkeypatch.setenv("MSGC_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {i}: to be, or not to be\n" for i in range(800)))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: demo-tiny\n"
        "model: {family: gpt2, vocab_size: 260, max_seq_len: 16, hidden: 16, heads: 2,\n"
        "        ffn: 32, layers: 1}\n"
        "growth: {ramp_steps: 2, stages: [{step: 2, hidden: 32, layers: 2}]}\n"
        f"train: {{steps: 6, batch_size: 2, seq_len: 16, tokenizer: byte, data: '{text}'}}\n"
    )
    status, out, _ = run_main(capsys, "demo", "--spec", spec, "--steps", "6",
                              "--out", tmp_path / "demo")
    assert status == 0
    assert out.count("OK ") == len(SPECS)
    assert "speedup (wall)" in out
    assert f"plot: {tmp_path / 'demo' / 'compare.png'}" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
