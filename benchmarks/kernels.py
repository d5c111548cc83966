"""Benchmark of the masked kernels against eager torch, weight fold and torch.compile.

    python benchmarks/kernels.py [--json PATH] [--quick] [--sizes 1024,2048] [--skip IMPLS]

On a CUDA GPU (bf16, M = 8192 tokens, d in {1024, 2048, 4096}): the qkv (K=d, N=3d), up
(K=d, N=4d, GELU; and SwiGLU) and down (K=4d, N=d) projections and the masked LayerNorm
(8192 x d), forward and forward+backward, for eager torch (F.linear + separate mul),
weight fold + cuBLAS, torch.compile (default and max-autotune), msgc's Triton kernels and
the dispatcher's choice. Timings: triton.testing.do_bench medians.

On a CPU: the torch paths only (eager, fold, torch.compile default when it compiles
quickly) at M = 512, d in {256, 512}, fp32, with perf_counter medians; the output and
the JSON say that the GPU figures are absent.

The full GPU run compiles every case with max-autotune (tens of minutes); for a short
run on a GPU use ``--quick --skip compile-max`` (d = 1024 only, no max-autotune).

Prints a table (ms, TFLOP/s for GEMMs or GB/s for the norm, ratios to eager and to the
best torch.compile) and writes JSON to benchmarks/results/kernels-<device>.json. The
device-copy bandwidth (x.clone(), read + write) is measured too, as the norm's ceiling.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

# Spinning OpenMP workers left behind by torch.compile's CPU kernels starve the eager ops
# timed after them on a small machine (100x slower medians): let idle workers sleep.
# Takes effect only when this module is imported before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgc.kernels as K  # noqa: E402

_ml = importlib.import_module("msgc.kernels.masked_linear")
_mn = importlib.import_module("msgc.kernels.masked_norm")

RESULTS = Path(__file__).resolve().parent / "results"


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------


def time_ms(fn, device: torch.device, grads: list[torch.Tensor], budget_s: float = 0.5):
    """Median milliseconds of fn(): do_bench on a GPU, warmed-up perf_counter on a CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, grad_to_none=grads or None, return_mode="median"))

    def call():
        for g in grads:
            g.grad = None
        fn()

    for _ in range(2):
        call()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 5 or (time.perf_counter() - start < budget_s and len(samples) < 50):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(samples)


def copy_bandwidth_gbps(device: torch.device, dtype: torch.dtype, numel: int) -> float:
    x = torch.randn(numel, device=device).to(dtype)
    ms = time_ms(lambda: x.clone(), device, [])
    return 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------


def make_mask(n: int, device: torch.device) -> torch.Tensor:
    m = torch.rand(n, device=device) * 0.9 + 0.05
    m[: n // 4] = 0.0
    m[n // 4 : n // 2] = 1.0
    return m


def linear_cases(M: int, d: int) -> list[dict]:
    return [
        {"case": "qkv", "K": d, "N": 3 * d, "act": None},
        {"case": "up_gelu", "K": d, "N": 4 * d, "act": "gelu"},
        {"case": "up_swiglu", "K": d, "N": 4 * d, "act": "swiglu"},
        {"case": "down", "K": 4 * d, "N": d, "act": None},
    ]


def build_linear(spec: dict, M: int, dtype, device):
    K_, N = spec["K"], spec["N"]
    x = torch.randn(M, K_, device=device).to(dtype)
    m = make_mask(N, device)
    if spec["act"] == "swiglu":
        wg = (torch.randn(N, K_, device=device) / K_**0.5).to(dtype)
        wu = (torch.randn(N, K_, device=device) / K_**0.5).to(dtype)
        params = [x, wg, wu]
        impls = {
            "eager": lambda x, wg, wu: _ml.masked_swiglu_reference(x, wg, wu, m),
            "fold": lambda x, wg, wu: _ml.masked_swiglu_fold(x, wg, wu, m),
            "msgc-triton": lambda x, wg, wu: _ml.masked_swiglu_triton(x, wg, wu, m),
            "msgc-dispatch": lambda x, wg, wu: K.masked_swiglu(x, wg, wu, m),
        }
        flops = 2 * 2 * M * N * K_
    else:
        act = spec["act"]
        w = (torch.randn(N, K_, device=device) / K_**0.5).to(dtype)
        b = torch.randn(N, device=device).to(dtype)
        params = [x, w, b]
        impls = {
            "eager": lambda x, w, b: _ml.masked_linear_reference(x, w, b, m, act),
            "fold": lambda x, w, b: _ml.masked_linear_fold(x, w, b, m, act),
            "msgc-triton": lambda x, w, b: _ml.masked_linear_triton(x, w, b, m, act),
            "msgc-dispatch": lambda x, w, b: K.masked_linear(x, w, b, m, act),
        }
        flops = 2 * M * N * K_
    return params, impls, flops


def build_norm(M: int, d: int, dtype, device):
    x = torch.randn(M, d, device=device).to(dtype)
    w = (1 + 0.1 * torch.randn(d, device=device)).to(dtype)
    b = (0.1 * torch.randn(d, device=device)).to(dtype)
    m = make_mask(d, device)
    impls = {
        "eager": lambda x, w, b: _mn.masked_norm_reference(x, w, b, m, 1e-5, "layer"),
        "msgc-triton": lambda x, w, b: _mn.masked_norm_triton(x, w, b, m, 1e-5, "layer"),
        "msgc-dispatch": lambda x, w, b: K.masked_norm(x, w, b, m, 1e-5, "layer"),
    }
    return [x, w, b], impls, x.numel() * x.element_size()


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------


def make_step(fn, params, mode: str):
    """(step, leaves): one forward (no grad) or forward + backward of fn(*params)."""
    if mode == "fwd":

        def step():
            with torch.no_grad():
                fn(*params)

        return step, []
    leaves = [p.detach().requires_grad_() for p in params]
    dy = torch.randn_like(fn(*leaves).detach())

    def step():
        fn(*leaves).backward(dy)

    return step, leaves


def time_steps(steps: dict, device: torch.device, budget_s: float = 2.0) -> dict[str, float]:
    """Median ms per step. On a GPU: do_bench, one after another. On a CPU: warmed up,
    then timed in interleaved rounds so that a change in machine load hits all alike."""
    if device.type == "cuda":
        return {k: time_ms(step, device, leaves) for k, (step, leaves) in steps.items()}

    def call(step, leaves):
        for g in leaves:
            g.grad = None
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    for step, leaves in steps.values():
        for _ in range(3):
            call(step, leaves)
    samples: dict[str, list[float]] = {k: [] for k in steps}
    start = time.perf_counter()
    rounds = 0
    while rounds < 7 or (time.perf_counter() - start < budget_s and rounds < 60):
        for k, (step, leaves) in steps.items():
            samples[k].append(call(step, leaves))
        rounds += 1
    for k, v in samples.items():
        _CPU_MIN_MS[k] = 1e3 * min(v)
    return {k: 1e3 * statistics.median(v) for k, v in samples.items()}


# Fastest sample per implementation of the last CPU measurement (recorded as ms_min).
_CPU_MIN_MS: dict[str, float] = {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    ap.add_argument("--quick", action="store_true", help="the smallest size only")
    ap.add_argument("--sizes", default=None, help="comma-separated hidden sizes d")
    ap.add_argument("--tokens", type=int, default=None, help="M (tokens)")
    ap.add_argument(
        "--skip", default="", help="comma-separated implementations to skip (e.g. compile-max)"
    )
    args = ap.parse_args(argv)

    gpu = torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET")
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    M = args.tokens or (8192 if gpu else 512)
    sizes = [1024, 2048, 4096] if gpu else [256, 512]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = sizes[:1]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    name = device_name(device)
    torch.manual_seed(0)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False

    load_start = _loadavg()
    notes = []
    if not gpu:
        notes.append(
            "No CUDA GPU: GPU figures (bf16, M=8192, Triton kernels, torch.compile "
            "max-autotune) are absent; torch paths only, fp32, small sizes."
        )
        notes.append(
            "CPU timings are medians of interleaved rounds (ms; ms_min is the fastest "
            "sample); on a shared, loaded machine (see loadavg_start_end) they are noisy."
        )
    copy_numel = M * max(sizes) * (4 if gpu else 1)
    copy_gbps = copy_bandwidth_gbps(device, dtype, copy_numel)
    print(f"device: {name}   dtype: {str(dtype).removeprefix('torch.')}   M = {M}")
    print(f"device copy bandwidth (x.clone(), read + write): {copy_gbps:.1f} GB/s")
    for n in notes:
        print("NOTE:", n)

    compile_modes = {"compile": "default"}
    if gpu:
        compile_modes["compile-max"] = "max-autotune-no-cudagraphs"
    compile_ok = "compile" not in skip
    compile_reason = "" if compile_ok else "skipped by --skip"
    rows: list[dict] = []

    for d in sizes:
        work = [
            (spec, *build_linear(spec, M, dtype, device), "gemm") for spec in linear_cases(M, d)
        ]
        norm_spec = {"case": "norm_layer", "K": d, "N": d, "act": None}
        work.append((norm_spec, *build_norm(M, d, dtype, device), "norm"))
        for spec, params, impls, size, kind in work:
            impls = dict(impls)
            if not gpu:  # the Triton kernels are GPU-only here (the interpreter is a test tool)
                impls.pop("msgc-triton", None)
            for cname, cmode in compile_modes.items():
                if cname in skip or (cname == "compile" and not compile_ok):
                    continue
                impls[cname] = ("compile", cmode)
            for mode in ("fwd", "fwd+bwd"):
                steps: dict = {}
                chosen = None
                for iname, fn in impls.items():
                    if iname in skip:
                        continue
                    if isinstance(fn, tuple):
                        torch._dynamo.reset()
                        fn = torch.compile(impls["eager"], mode=fn[1], dynamic=False)
                        t0 = time.perf_counter()
                        try:
                            step = make_step(fn, params, mode)
                            step[0]()  # compile the backward too
                        except Exception as err:  # noqa: BLE001 - report, keep going
                            print(f"  {iname} failed: {type(err).__name__}: {err}"[:200])
                            if iname == "compile":
                                compile_ok, compile_reason = False, f"failed: {err}"[:200]
                            continue
                        if not gpu and time.perf_counter() - t0 > 120:
                            compile_ok, compile_reason = False, "too slow to compile on CPU"
                        steps[iname] = step
                    else:
                        steps[iname] = make_step(fn, params, mode)
                        if iname == "msgc-dispatch":
                            steps[iname][0]()  # let the dispatcher measure and cache
                            chosen = _chosen(spec, params, mode)
                _CPU_MIN_MS.clear()
                results = time_steps(steps, device)
                _add_rows(rows, d, M, spec, kind, mode, size, results, chosen)
                _print_rows(rows[-len(results) :])

    out = {
        "device": name,
        "gpu": gpu,
        "dtype": str(dtype).removeprefix("torch."),
        "M": M,
        "sizes": sizes,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "copy_bandwidth_GBps": copy_gbps,
        "loadavg_start_end": [load_start, _loadavg()],
        "notes": notes + ([f"torch.compile: {compile_reason}"] if compile_reason else []),
        "gpu_figures_absent": not gpu,
        "results": rows,
    }
    path = args.json or RESULTS / f"kernels-{slugify(name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def _chosen(spec: dict, params, mode: str) -> str:
    """The dispatcher's cached choice for this case (or its static rule on a CPU)."""
    infos = K.dispatch.cache_info()
    grad = mode == "fwd+bwd"
    op = {"norm_layer": "masked_norm", "up_swiglu": "masked_swiglu"}.get(
        spec["case"], "masked_linear"
    )
    for key, val in infos.items():
        if key[0] == op and key[-1] == grad and key[3] == (tuple(params[0].shape), params[0].dtype):
            if op != "masked_linear" or key[-2][0] == spec["act"]:
                return val
    return "fold" if op != "masked_norm" else "reference"


def _add_rows(rows, d, M, spec, kind, mode, size, results, chosen):
    eager = results.get("eager")
    comp = [results[k] for k in ("compile", "compile-max") if k in results]
    best_compile = min(comp) if comp else None
    factor = 3 if mode == "fwd+bwd" else 1
    for iname, ms in results.items():
        row = {
            "d": d,
            "case": spec["case"],
            "M": M,
            "N": spec["N"],
            "K": spec["K"],
            "mode": mode,
            "impl": iname,
            "ms": round(ms, 5),
            "ms_min": round(_CPU_MIN_MS[iname], 5) if iname in _CPU_MIN_MS else None,
            "x_eager": round(eager / ms, 3) if eager else None,
            "x_compile": round(best_compile / ms, 3) if best_compile else None,
        }
        if kind == "gemm":
            row["tflops"] = round(factor * size / (ms * 1e-3) / 1e12, 3)
        else:  # norm: fwd reads x, writes y; bwd also reads x, dy and writes dx
            traffic = size * (2 if mode == "fwd" else 5)
            row["gbps"] = round(traffic / (ms * 1e-3) / 1e9, 2)
        if iname == "msgc-dispatch" and chosen:
            row["chosen"] = chosen
        rows.append(row)


_printed_header = False


def _print_rows(rows):
    global _printed_header
    if not _printed_header:
        print(
            f"{'d':>5} {'case':<10} {'mode':<8} {'impl':<22} {'ms':>9} "
            f"{'TFLOP/s|GB/s':>13} {'x eager':>8} {'x compile':>9}"
        )
        _printed_header = True
    for r in rows:
        rate = f"{r['tflops']:.2f} TF" if "tflops" in r else f"{r['gbps']:.1f} GB/s"
        impl = r["impl"] + (f" ({r['chosen']})" if r.get("chosen") else "")
        xe = f"{r['x_eager']:.2f}" if r["x_eager"] else "-"
        xc = f"{r['x_compile']:.2f}" if r["x_compile"] else "-"
        print(
            f"{r['d']:>5} {r['case']:<10} {r['mode']:<8} {impl:<22} {r['ms']:>9.3f} "
            f"{rate:>13} {xe:>8} {xc:>9}"
        )


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
