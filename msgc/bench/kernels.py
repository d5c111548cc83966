"""`msgc bench kernels`: the masked kernels timed against eager torch, weight fold and
torch.compile, on this machine.

Cases, per hidden size d and M tokens: the qkv projection (K = d, N = 3d), the up
projection (K = d, N = 4d) with GELU and as SwiGLU, the down projection (K = 4d, N = d),
and the masked LayerNorm (M x d); each forward only and forward + backward.
Implementations: ``eager`` (the torch reference: F.linear, then the mask), ``fold``
(mask folded into the weight, then cuBLAS), ``msgc-triton`` (msgc's fused kernels),
``msgc-dispatch`` (what msgc's dispatcher picks), ``compile`` (torch.compile of the
reference) and ``compile-max`` (the same with max-autotune).

On a CUDA GPU: bf16, M = 8192, d in {1024, 2048, 4096}, all implementations,
triton.testing.do_bench medians. The full run autotunes every case (tens of minutes);
``--quick --skip compile-max`` is a short one. On a CPU: fp32, M = 512, d in {256, 512},
the torch paths only (the Triton kernels and max-autotune need a GPU), medians of
interleaved rounds. The table shows ms, TFLOP/s (GEMMs) or GB/s (the norm) and the
ratios to eager and to the best torch.compile; the copy bandwidth (x.clone()) is the
norm's ceiling.

OpenMP workers that torch.compile's CPU kernels leave spinning starve the eager ops
timed after them (100x slower medians), so the benchmark wants ``OMP_WAIT_POLICY=PASSIVE``
in the environment before torch is imported: `msgc bench kernels` re-runs itself with it
set, and benchmarks/kernels.py sets it before it imports msgc.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from msgc.bench.results import device_name, write_result
from msgc.errors import MsgcError, SpecError
from msgc.kernels import (
    chosen_impl,
    masked_linear,
    masked_linear_fold,
    masked_linear_reference,
    masked_linear_triton,
    masked_norm,
    masked_norm_reference,
    masked_norm_triton,
    masked_swiglu,
    masked_swiglu_fold,
    masked_swiglu_reference,
    masked_swiglu_triton,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The names --dtypes takes."""
DEFAULT_SIZES = {"cuda": (1024, 2048, 4096), "cpu": (256, 512)}
DEFAULT_TOKENS = {"cuda": 8192, "cpu": 512}
DEFAULT_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}
IMPLS = ("eager", "fold", "msgc-triton", "msgc-dispatch", "compile", "compile-max")
"""Every implementation, in table order; --skip takes these names."""
GPU_ONLY = ("msgc-triton", "compile-max")
"""Implementations timed on a CUDA GPU only (the Triton interpreter is a test tool)."""
COMPILE_MODES = {"compile": "default", "compile-max": "max-autotune-no-cudagraphs"}
MODES = ("fwd", "fwd+bwd")
CPU_COMPILE_LIMIT_S = 120.0
"""On a CPU, a torch.compile slower than this is not tried again for the next cases."""
DESCRIPTION = "Time msgc's masked kernels against eager torch, weight fold and torch.compile."
EPILOG = ("On a CUDA GPU: bf16, M = 8192, d = 1024,2048,4096, every implementation; the full "
          "run autotunes each case (tens of minutes), --quick --skip compile-max is a short "
          "one. On a CPU: fp32, M = 512, d = 256,512, the torch paths only (the Triton "
          "kernels and max-autotune need a GPU). The first line names the device.")
GPU_FIGURES = ("msgc's Triton kernels (msgc-triton), torch.compile max-autotune "
               "(compile-max) and bf16 at M = 8192 tokens with d = 1024, 2048, 4096")
"""The figures that need a CUDA GPU."""


# --- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What to measure, where, and where the JSON goes (None: print only)."""

    device: torch.device
    dtypes: tuple[torch.dtype, ...]
    tokens: int
    sizes: tuple[int, ...]
    skip: frozenset[str]
    budget_s: float
    json_path: Path | None

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (strings: `settings_from_args` checks them)."""
    parser.add_argument("--quick", action="store_true",
                        help="the smallest size only, shorter timing loops")
    parser.add_argument("--sizes", metavar="D,D",
                        help="comma-separated hidden sizes d (GPU: 1024,2048,4096; CPU: 256,512)")
    parser.add_argument("--tokens", metavar="M", help="tokens per call (GPU: 8192; CPU: 512)")
    parser.add_argument("--dtypes", metavar="DTYPE,DTYPE",
                        help=f"comma-separated, of {', '.join(DTYPES)} (GPU: bf16; CPU: fp32)")
    parser.add_argument("--skip", metavar="IMPL,IMPL",
                        help=f"comma-separated implementations not to time, of {', '.join(IMPLS)}")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the results and the run's metadata as JSON here "
                             "(default: no file; benchmarks/kernels.py in a source checkout "
                             "writes benchmarks/results/kernels-<device>.json)")


def settings_from_args(args: argparse.Namespace, results_dir: Path | None = None) -> Settings:
    """Check the options; `results_dir` is where the JSON goes when --json is not given.

    Raises SpecError naming the option on a bad value.
    """
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    gpu = torch.cuda.is_available() and not interpret
    device = torch.device("cuda" if gpu else "cpu")
    sizes = _ints("--sizes", args.sizes) if args.sizes else DEFAULT_SIZES[device.type]
    json_path = args.json
    if json_path is None and results_dir is not None:
        json_path = results_dir / f"kernels-{device_slug(device)}.json"
    return Settings(
        device=device,
        dtypes=_dtypes(args.dtypes) if args.dtypes else (DEFAULT_DTYPE[device.type],),
        tokens=_positive("--tokens", args.tokens) if args.tokens else DEFAULT_TOKENS[device.type],
        sizes=sizes[:1] if args.quick else sizes,
        skip=frozenset(_names("--skip", args.skip, IMPLS)) if args.skip else frozenset(),
        budget_s=0.5 if args.quick else 2.0,
        json_path=json_path,
    )


def option_argv(args: argparse.Namespace) -> list[str]:
    """The command-line options that give `args` back (to re-run the benchmark)."""
    argv = ["--quick"] if args.quick else []
    for name in ("sizes", "tokens", "dtypes", "skip", "json"):
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name}", str(value)]
    return argv


def _split(option: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise SpecError(f"{option}: give a comma-separated list, not {text!r}")
    return items


def _positive(option: str, text: str) -> int:
    """A positive whole number."""
    if not text.strip().isdigit() or int(text) == 0:
        raise SpecError(f"{option}: {text!r} is not a positive whole number")
    return int(text)


def _ints(option: str, text: str) -> tuple[int, ...]:
    """Positive whole numbers from a comma-separated list."""
    return tuple(_positive(option, item) for item in _split(option, text))


def _names(option: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """Names from a comma-separated list, each one of `allowed`."""
    items = _split(option, text)
    for item in items:
        if item not in allowed:
            raise SpecError(f"{option}: {item!r} is not one of {', '.join(allowed)}")
    return items


def _dtypes(text: str) -> tuple[torch.dtype, ...]:
    return tuple(DTYPES[name] for name in _names("--dtypes", text, tuple(DTYPES)))


def device_slug(device: torch.device) -> str:
    """The device in a file name: ``cpu``, or the GPU's name in lower case with dashes."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "gpu"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- cases ------------------------------------------------------------------------------


@dataclass
class Case:
    """One masked op at one shape: its inputs and the implementations to time.

    `work` is the forward's FLOPs for a GEMM (kind "gemm") and the bytes of x for the norm
    (kind "norm"). `op` and `options` are what the dispatcher is asked about.
    """

    name: str
    kind: str
    K: int
    N: int
    inputs: list[Tensor]
    mask: Tensor
    impls: dict[str, Callable[..., Tensor]]
    work: float
    op: str
    options: tuple[Any, ...] = ()

    def chosen(self, inputs: list[Tensor]) -> str:
        """The dispatcher's choice for these inputs (its cached measurement on a GPU)."""
        return chosen_impl(self.op, *inputs, self.mask, *self.options)


def make_mask(n: int, device: torch.device) -> Tensor:
    """A ramp-time mask: a quarter 0, a quarter 1, the rest in (0.05, 0.95)."""
    m = torch.rand(n, device=device) * 0.9 + 0.05
    m[: n // 4] = 0.0
    m[n // 4 : n // 2] = 1.0
    return m


def _randn(*shape: int, dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> Tensor:
    return (scale * torch.randn(*shape, device=device)).to(dtype)


def linear_case(name: str, M: int, K: int, N: int, act: str | None, dtype: torch.dtype,
                device: torch.device) -> Case:
    """A masked linear + activation: x (M, K), weight (N, K), bias (N,)."""
    inputs = [_randn(M, K, dtype=dtype, device=device),
              _randn(N, K, dtype=dtype, device=device, scale=K**-0.5),
              _randn(N, dtype=dtype, device=device)]
    m = make_mask(N, device)
    impls = {
        "eager": lambda x, w, b: masked_linear_reference(x, w, b, m, act),
        "fold": lambda x, w, b: masked_linear_fold(x, w, b, m, act),
        "msgc-triton": lambda x, w, b: masked_linear_triton(x, w, b, m, act),
        "msgc-dispatch": lambda x, w, b: masked_linear(x, w, b, m, act),
    }
    return Case(name, "gemm", K, N, inputs, m, impls, 2 * M * N * K, "masked_linear", (act,))


def swiglu_case(M: int, K: int, N: int, dtype: torch.dtype, device: torch.device) -> Case:
    """A masked SwiGLU: x (M, K), gate and up weights (N, K)."""
    inputs = [_randn(M, K, dtype=dtype, device=device),
              _randn(N, K, dtype=dtype, device=device, scale=K**-0.5),
              _randn(N, K, dtype=dtype, device=device, scale=K**-0.5)]
    m = make_mask(N, device)
    impls = {
        "eager": lambda x, wg, wu: masked_swiglu_reference(x, wg, wu, m),
        "fold": lambda x, wg, wu: masked_swiglu_fold(x, wg, wu, m),
        "msgc-triton": lambda x, wg, wu: masked_swiglu_triton(x, wg, wu, m),
        "msgc-dispatch": lambda x, wg, wu: masked_swiglu(x, wg, wu, m),
    }
    return Case("up_swiglu", "gemm", K, N, inputs, m, impls, 2 * 2 * M * N * K, "masked_swiglu")


def norm_case(M: int, d: int, dtype: torch.dtype, device: torch.device) -> Case:
    """A masked LayerNorm over x (M, d) (a norm has no fold)."""
    inputs = [_randn(M, d, dtype=dtype, device=device),
              (1 + _randn(d, dtype=torch.float32, device=device, scale=0.1)).to(dtype),
              _randn(d, dtype=dtype, device=device, scale=0.1)]
    m = make_mask(d, device)
    impls = {
        "eager": lambda x, w, b: masked_norm_reference(x, w, b, m, 1e-5, "layer"),
        "msgc-triton": lambda x, w, b: masked_norm_triton(x, w, b, m, 1e-5, "layer"),
        "msgc-dispatch": lambda x, w, b: masked_norm(x, w, b, m, 1e-5, "layer"),
    }
    work = inputs[0].numel() * inputs[0].element_size()
    return Case("norm_layer", "norm", d, d, inputs, m, impls, work, "masked_norm",
                (1e-5, "layer"))


def cases(M: int, d: int, dtype: torch.dtype, device: torch.device) -> list[Case]:
    """The five cases of one hidden size d."""
    return [
        linear_case("qkv", M, d, 3 * d, None, dtype, device),
        linear_case("up_gelu", M, d, 4 * d, "gelu", dtype, device),
        swiglu_case(M, d, 4 * d, dtype, device),
        linear_case("down", M, 4 * d, d, None, dtype, device),
        norm_case(M, d, dtype, device),
    ]


# --- timing -----------------------------------------------------------------------------


@dataclass
class Step:
    """One timed call; the gradients of `leaves` are cleared before each."""

    run: Callable[[], Any]
    leaves: list[Tensor] = field(default_factory=list)

    def __call__(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None
        self.run()


@dataclass(frozen=True)
class Timing:
    """Median milliseconds per call, and the fastest sample (CPU timings only)."""

    ms: float
    ms_min: float | None = None


def make_step(fn: Callable[..., Tensor], inputs: list[Tensor], mode: str) -> Step:
    """`fn(*inputs)` forward only without grad ("fwd"), or forward + backward ("fwd+bwd")."""
    if mode == "fwd":
        def forward() -> None:
            with torch.no_grad():
                fn(*inputs)

        return Step(forward)
    leaves = [t.detach().requires_grad_() for t in inputs]
    dy = torch.randn_like(fn(*leaves).detach())
    return Step(lambda: fn(*leaves).backward(dy), leaves)


def time_steps(steps: dict[str, Step], device: torch.device, budget_s: float) -> dict[str, Timing]:
    """Time each step: do_bench medians on a GPU, interleaved rounds on a CPU."""
    if device.type == "cuda":
        return {name: _time_gpu(step) for name, step in steps.items()}
    return _time_cpu(steps, budget_s)


def _time_gpu(step: Step) -> Timing:
    from triton.testing import do_bench

    return Timing(float(do_bench(step.run, grad_to_none=step.leaves or None,
                                 return_mode="median")))


def _time_cpu(steps: dict[str, Step], budget_s: float) -> dict[str, Timing]:
    """Warm up, then time one call of every step per round, so that a change of machine
    load hits all alike: at least 7 rounds, more until `budget_s` (at most 60)."""
    for step in steps.values():
        for _ in range(3):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    start, rounds = time.perf_counter(), 0
    while steps and (rounds < 7 or (time.perf_counter() - start < budget_s and rounds < 60)):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: Timing(1e3 * statistics.median(s), 1e3 * min(s)) for name, s in samples.items()}


def copy_bandwidth_gbps(settings: Settings) -> float:
    """GB/s of x.clone() (read + write) for an fp32 tensor of a size like the cases'."""
    numel = settings.tokens * max(settings.sizes) * (4 if settings.gpu else 1)
    x = torch.randn(numel, device=settings.device)
    timing = time_steps({"copy": Step(x.clone)}, settings.device, settings.budget_s / 4)
    return 2 * x.numel() * x.element_size() / (timing["copy"].ms * 1e-3) / 1e9


# --- torch.compile ----------------------------------------------------------------------


@dataclass
class CompileStatus:
    """Whether torch.compile (default mode) is still tried, and why not."""

    ok: bool = True
    reason: str = ""


def compiled_step(case: Case, name: str, mode: str, settings: Settings,
                  status: CompileStatus) -> Step | None:
    """A step of torch.compile of the case's reference, compiled forward and backward;
    None when compiling fails (printed, and for "compile" remembered in `status`)."""
    torch.compiler.reset()
    fn = torch.compile(case.impls["eager"], mode=COMPILE_MODES[name], dynamic=False)
    t0 = time.perf_counter()
    try:
        step = make_step(fn, case.inputs, mode)
        step()  # compiles the backward too
    except Exception as err:  # noqa: BLE001 - report it and measure the rest
        print(f"  {name} failed: {type(err).__name__}: {err}"[:200])
        if name == "compile":
            status.ok, status.reason = False, f"failed: {err}"[:200]
        return None
    if not settings.gpu and time.perf_counter() - t0 > CPU_COMPILE_LIMIT_S:
        status.ok, status.reason = False, "too slow to compile on this CPU"
    return step


def impl_names(case: Case, settings: Settings, status: CompileStatus) -> list[str]:
    """The implementations to time for `case` here, in table order."""
    names = [*case.impls, *COMPILE_MODES]
    return [name for name in names
            if name not in settings.skip
            and (settings.gpu or name not in GPU_ONLY)
            and (name != "compile" or status.ok)]


def build_steps(case: Case, mode: str, settings: Settings,
                status: CompileStatus) -> tuple[dict[str, Step], str | None]:
    """The steps to time for one case and mode, and the dispatcher's choice (if timed)."""
    steps: dict[str, Step] = {}
    chosen = None
    for name in impl_names(case, settings, status):
        if name in COMPILE_MODES:
            step = compiled_step(case, name, mode, settings, status)
            if step is not None:
                steps[name] = step
            continue
        steps[name] = make_step(case.impls[name], case.inputs, mode)
        if name == "msgc-dispatch":
            steps[name]()  # the dispatcher measures and caches its choice
            chosen = case.chosen(steps[name].leaves or case.inputs)
    return steps, chosen


# --- rows and the table -----------------------------------------------------------------


def case_rows(case: Case, d: int, M: int, dtype: torch.dtype, mode: str,
              timings: dict[str, Timing], chosen: str | None) -> list[dict[str, Any]]:
    """One JSON row per implementation: ms, rate and ratios to eager and best compile."""
    eager = timings["eager"].ms if "eager" in timings else None
    compiled = [timings[n].ms for n in COMPILE_MODES if n in timings]
    best_compile = min(compiled) if compiled else None
    rows = []
    for name, timing in timings.items():
        row = {
            "d": d, "case": case.name, "dtype": dtype_name(dtype), "M": M, "N": case.N,
            "K": case.K, "mode": mode, "impl": name, "ms": round(timing.ms, 5),
            "ms_min": None if timing.ms_min is None else round(timing.ms_min, 5),
            "x_eager": round(eager / timing.ms, 3) if eager else None,
            "x_compile": round(best_compile / timing.ms, 3) if best_compile else None,
        }
        row.update(_rate(case, mode, timing.ms))
        if name == "msgc-dispatch" and chosen:
            row["chosen"] = chosen
        rows.append(row)
    return rows


def _rate(case: Case, mode: str, ms: float) -> dict[str, float]:
    """TFLOP/s of a GEMM (backward: twice the forward's FLOPs), or GB/s of the norm
    (forward: read x, write y; backward also reads x and dy and writes dx)."""
    seconds = ms * 1e-3
    if case.kind == "gemm":
        return {"tflops": round((1 if mode == "fwd" else 3) * case.work / seconds / 1e12, 3)}
    return {"gbps": round((2 if mode == "fwd" else 5) * case.work / seconds / 1e9, 2)}


TABLE_HEADER = (f"{'d':>5} {'case':<10} {'dtype':<8} {'mode':<8} {'impl':<26} {'ms':>9} "
                f"{'TFLOP/s|GB/s':>13} {'x eager':>8} {'x compile':>9}")


def format_row(row: dict[str, Any]) -> str:
    """One line of the table."""
    rate = f"{row['tflops']:.2f} TF" if "tflops" in row else f"{row['gbps']:.1f} GB/s"
    impl = row["impl"] + (f" ({row['chosen']})" if row.get("chosen") else "")
    x_eager = f"{row['x_eager']:.2f}" if row["x_eager"] else "-"
    x_compile = f"{row['x_compile']:.2f}" if row["x_compile"] else "-"
    return (f"{row['d']:>5} {row['case']:<10} {row['dtype']:<8} {row['mode']:<8} {impl:<26} "
            f"{row['ms']:>9.3f} {rate:>13} {x_eager:>8} {x_compile:>9}")


# --- the run ----------------------------------------------------------------------------


def notes(settings: Settings) -> list[str]:
    """What the reader must know about these figures (on a CPU: which ones are absent)."""
    if settings.gpu:
        return ["CUDA GPU: every implementation is timed (triton.testing.do_bench medians)."]
    dtypes = ", ".join(dtype_name(t) for t in settings.dtypes)
    sizes = ", ".join(map(str, settings.sizes))
    return [
        f"No CUDA GPU in use, so the figures that need one are absent: {GPU_FIGURES}. "
        f"Measured here: the torch paths at M = {settings.tokens}, d = {sizes}, {dtypes}.",
        "CPU timings are medians of interleaved rounds (ms; ms_min is the fastest sample); "
        "on a shared, loaded machine (see loadavg_start_end) they are noisy.",
    ]


def table(settings: Settings, status: CompileStatus) -> list[dict[str, Any]]:
    """Time every dtype, size, case, mode and implementation; print and return the rows."""
    print(TABLE_HEADER)
    rows: list[dict[str, Any]] = []
    for dtype in settings.dtypes:
        for d in settings.sizes:
            for case in cases(settings.tokens, d, dtype, settings.device):
                for mode in MODES:
                    steps, chosen = build_steps(case, mode, settings, status)
                    timings = time_steps(steps, settings.device, settings.budget_s)
                    new = case_rows(case, d, settings.tokens, dtype, mode, timings, chosen)
                    for row in new:
                        print(format_row(row), flush=True)
                    rows += new
    return rows


def measure(settings: Settings) -> dict[str, Any]:
    """Print the device, the notes and the table; the JSON payload."""
    torch.manual_seed(0)
    if settings.gpu:
        torch.backends.cuda.matmul.allow_tf32 = False
    name = device_name(settings.device)
    load_start = _loadavg()
    print(f"device: {name}" + ("" if settings.gpu else " (CPU)"))
    for note in notes(settings):
        print(f"NOTE: {note}")
    copy_gbps = copy_bandwidth_gbps(settings)
    print(f"M = {settings.tokens}; device copy bandwidth (x.clone(), read + write): "
          f"{copy_gbps:.1f} GB/s")
    status = CompileStatus(reason="" if "compile" not in settings.skip else "skipped by --skip")
    rows = table(settings, status)
    return {
        "device": name,
        "gpu": settings.gpu,
        "dtypes": [dtype_name(t) for t in settings.dtypes],
        "M": settings.tokens,
        "sizes": list(settings.sizes),
        "copy_bandwidth_GBps": copy_gbps,
        "loadavg_start_end": [load_start, _loadavg()],
        "notes": notes(settings) + ([f"torch.compile: {status.reason}"] if status.reason else []),
        "gpu_figures_absent": not settings.gpu,
        "results": rows,
    }


def run(settings: Settings) -> int:
    """Measure, print, and write the JSON if asked; the exit status."""
    payload = measure(settings)
    if settings.json_path is not None:
        write_result(settings.json_path, payload)
        print(f"wrote {settings.json_path}")
    return 0


def main(argv: list[str] | None = None, results_dir: Path | None = None) -> int:
    """benchmarks/kernels.py's entry point: parse `argv`, run; 2 on a bad option.

    Without --json the JSON goes to `results_dir`/kernels-<device>.json when given.
    """
    parser = argparse.ArgumentParser(prog="benchmarks/kernels.py", description=DESCRIPTION,
                                     epilog=EPILOG)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(settings_from_args(args, results_dir))
    except MsgcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
