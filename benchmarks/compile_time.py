"""Compile time: trace + analyze + grow (verify on) for GPT-2-small-shaped models.

For 12, 24 and 48 layers of a 124M-shaped GPT-2 (d=768, 12 heads, FFN 3072, vocab 50257),
grows to 2x hidden (and heads) and 2x layers, and measures side by side, in one process:
- msgc.grow with verify (seconds, peak RSS growth),
- building that 2x model from scratch with PyTorch's default initialisation.
Writes JSON to benchmarks/results/compile_time.json.

    python benchmarks/compile_time.py [--layers 12 24 48] [--quick]
"""

import argparse
import gc
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import msgc
from msgc.bench.results import write_result
from msgc.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def gpt2_spec(hidden: int, heads: int, layers: int, ffn: int, vocab: int) -> SimpleNamespace:
    return SimpleNamespace(
        family="gpt2", vocab_size=vocab, max_seq_len=1024, hidden=hidden, heads=heads,
        kv_heads=heads, head_dim=64, ffn=ffn, layers=layers, dropout=0.0, tie_embeddings=True,
        norm_eps=1e-5, activation="gelu", type_vocab_size=2,
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(layers: int, d: int, vocab: int) -> dict:
    torch.manual_seed(0)
    small = build_model(gpt2_spec(d, d // 64, layers, 4 * d, vocab))
    ids = torch.randint(0, vocab, (2, 16))
    gc.collect()
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    grown = msgc.grow(small, (ids,), hidden=2 * d, heads=2 * d // 64, ffn=8 * d,
                      layers=2 * layers)
    grow_s = time.perf_counter() - start
    rss_after = peak_rss_mb()
    grown_params = msgc.count_parameters(grown)
    del grown
    gc.collect()
    start = time.perf_counter()
    scratch = build_model(gpt2_spec(2 * d, 2 * d // 64, 2 * layers, 8 * d, vocab))
    scratch_s = time.perf_counter() - start
    del scratch
    return {
        "layers": layers,
        "grown_layers": 2 * layers,
        "small_params": msgc.count_parameters(small),
        "grown_params": grown_params,
        "grow_seconds": grow_s,
        "scratch_build_seconds": scratch_s,
        "grow_over_scratch": grow_s / scratch_s,
        "peak_rss_increase_mb": rss_after - rss_before,
        "peak_rss_mb": rss_after,
        "peak_over_grown_param_bytes": (rss_after - rss_before) * 2**20 / (4 * grown_params),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24, 48])
    parser.add_argument("--quick", action="store_true", help="d=256, vocab 4096 (CI-sized)")
    parser.add_argument("--json", type=Path, default=RESULTS / "compile_time.json")
    args = parser.parse_args(argv)
    d, vocab = (256, 4096) if args.quick else (768, 50257)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    print(f"{'layers':>6} {'params':>8} {'grown':>8} {'grow s':>8} {'scratch s':>9} "
          f"{'ratio':>6} {'peak+MB':>8} {'peak/bytes':>10}")
    for layers in args.layers:
        row = measure(layers, d, vocab)
        rows.append(row)
        print(f"{layers:>6} {row['small_params'] / 1e6:>7.0f}M {row['grown_params'] / 1e6:>7.0f}M "
              f"{row['grow_seconds']:>8.2f} {row['scratch_build_seconds']:>9.2f} "
              f"{row['grow_over_scratch']:>6.2f} {row['peak_rss_increase_mb']:>8.0f} "
              f"{row['peak_over_grown_param_bytes']:>10.2f}", flush=True)
    result = {"hidden": d, "vocab": vocab, "device": "cpu", "torch": torch.__version__,
              "note": "peak RSS is ru_maxrss (process-wide high-water mark): the increase over "
                      "the mark before grow is what grow added", "rows": rows}
    write_result(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
