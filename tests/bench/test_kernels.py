"""`msgc bench kernels` and benchmarks/kernels.py on tiny sizes (the CPU path: the test
set-up sets TRITON_INTERPRET, so no GPU is used even where one is present)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msgc.bench import commands, kernels
from msgc.bench.results import cpu_name
from msgc.cli import main
from msgc.errors import SpecError

TINY = ["--quick", "--sizes", "64", "--tokens", "32"]
NO_COMPILE = ["--skip", "compile"]
DISPATCH_ONLY = ["--skip", "eager,fold,compile"]
CASES = ("qkv", "up_gelu", "up_swiglu", "down", "norm_layer")


@pytest.fixture
def passive_omp(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_WAIT_POLICY set, so that the command runs in this process."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


def kernel_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_times_every_case_mode_and_impl(tmp_path: Path, passive_omp: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out" / "kernels.json"
    assert main(["bench", "kernels", *TINY, *NO_COMPILE, "--json", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"device: {cpu_name()} (CPU)"
    assert out[1].startswith("NOTE: No CUDA GPU in use, so the figures that need one are absent")
    result = json.loads(path.read_text())
    assert result["meta"]["threads"] >= 1 and result["meta"]["date"]
    assert result["device"] == cpu_name() and result["gpu_figures_absent"] is True
    assert result["M"] == 32 and result["sizes"] == [64] and result["dtypes"] == ["float32"]
    for figure in ("Triton kernels", "max-autotune", "bf16 at M = 8192"):
        assert figure in result["notes"][0]
    assert "torch.compile: skipped by --skip" in result["notes"]
    rows = {(r["case"], r["mode"], r["impl"]): r for r in result["results"]}
    impls = {case: ("eager", "fold", "msgc-dispatch") for case in CASES}
    impls["norm_layer"] = ("eager", "msgc-dispatch")  # a norm has no fold
    expected = {(case, mode, impl) for case in CASES for mode in ("fwd", "fwd+bwd")
                for impl in impls[case]}
    assert set(rows) == expected
    assert all(r["ms"] > 0 and r["ms_min"] > 0 and r["x_eager"] > 0 for r in rows.values())
    assert rows["qkv", "fwd", "msgc-dispatch"]["chosen"] == "fold"
    assert rows["norm_layer", "fwd+bwd", "msgc-dispatch"]["chosen"] == "reference"
    assert rows["down", "fwd", "eager"]["tflops"] > 0
    assert rows["norm_layer", "fwd", "eager"]["gbps"] > 0


def test_no_json_without_the_option(tmp_path: Path, passive_omp: None,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "kernels", *TINY, *DISPATCH_ONLY]) == 0
    assert "msgc-dispatch" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_benchmark_script_writes_to_its_results_folder(tmp_path: Path) -> None:
    argv = [*TINY, "--dtypes", "bf16", *DISPATCH_ONLY]
    assert kernels.main(argv, results_dir=tmp_path) == 0
    result = json.loads((tmp_path / "kernels-cpu.json").read_text())
    assert {r["dtype"] for r in result["results"]} == {"bfloat16"}
    assert {r["impl"] for r in result["results"]} == {"msgc-dispatch"}


@pytest.mark.parametrize("argv, option", [
    (["--sizes", "abc"], "--sizes"),
    (["--sizes", "64,0"], "--sizes"),
    (["--sizes", ","], "--sizes"),
    (["--tokens", "many"], "--tokens"),
    (["--dtypes", "fp64"], "--dtypes"),
    (["--skip", "cuBLAS"], "--skip"),
])
def test_bad_options_are_msgc_errors(argv: list[str], option: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SpecError, match=f"^{option}: "):
        kernels.settings_from_args(kernel_args(*argv))
    assert main(["bench", "kernels", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}: ") and "Traceback" not in err


def test_defaults_and_quick_on_a_cpu() -> None:
    settings = kernels.settings_from_args(kernel_args("--dtypes", "fp32,bf16"))
    assert settings.sizes == (256, 512) and settings.tokens == 512 and not settings.gpu
    assert settings.json_path is None and len(settings.dtypes) == 2
    quick = kernels.settings_from_args(kernel_args("--quick"), results_dir=Path("r"))
    assert quick.sizes == (256,) and quick.json_path == Path("r/kernels-cpu.json")


def test_option_argv_gives_the_options_back() -> None:
    args = kernel_args(*TINY, *NO_COMPILE, "--dtypes", "bf16", "--json", "k.json")
    assert kernel_args(*kernels.option_argv(args)) == args


def test_reruns_itself_with_passive_omp_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    calls = []

    def fake_run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        calls.append((argv, env))
        return subprocess.CompletedProcess(argv, 3)

    monkeypatch.setattr(commands.subprocess, "run", fake_run)
    assert main(["bench", "kernels", *TINY, *NO_COMPILE]) == 3
    (argv, env), = calls
    assert argv == [sys.executable, "-m", "msgc", "bench", "kernels", *TINY, *NO_COMPILE]
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_installed_command_runs_as_python_m_msgc(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    path = tmp_path / "k.json"
    done = subprocess.run([sys.executable, "-m", "msgc", "bench", "kernels", *TINY,
                           *DISPATCH_ONLY, "--json", str(path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("device: ")
    assert json.loads(path.read_text())["results"]
