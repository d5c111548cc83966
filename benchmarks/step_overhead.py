"""Training-step overhead of masks: a grown GPT mid-ramp vs the same model folded.

Grows a gpt2-family model (hidden, heads, FFN, layers all at once, the worst case), sets
the masks to c = 0.5, and times full training steps (forward, backward, AdamW) of:
- masked: the grown model as msgc.grow returns it (masks as separate multiplies),
- fused: the grown model after msgc.fuse (masked ops through msgc.kernels' dispatcher),
- fused-compiled: the same with the dispatcher offered torch.compile'd variants
  (msgc.kernels.offer_compiled), which it measures and keeps where they win,
- folded: the folded model of the same size (no masks): the baseline;
and, unless --no-compile, torch.compile of the whole step's model, masked and folded.
All are timed interleaved in one process; the ratios are medians over rounds.

    python benchmarks/step_overhead.py [--json PATH] [--device cpu|cuda] [--no-compile]
"""

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# OpenMP reads this once, when torch loads: compiled CPU kernels leave their OpenMP
# workers spinning otherwise, starving the eager ops timed after them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import msgc  # noqa: E402
from msgc import kernels  # noqa: E402
from msgc.bench.results import write_result  # noqa: E402
from msgc.kernels import dispatch  # noqa: E402
from msgc.models import build_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def spec(hidden: int, heads: int, ffn: int, layers: int, vocab: int, seq: int):
    return SimpleNamespace(family="gpt2", vocab_size=vocab, max_seq_len=seq, hidden=hidden,
                           heads=heads, kv_heads=heads, head_dim=64, ffn=ffn, layers=layers,
                           dropout=0.0, tie_embeddings=True, norm_eps=1e-5, activation="gelu",
                           type_vocab_size=2)


def step_timer(model, ids, device, compiled_kernels: bool = False):
    """A timed training step; with ``compiled_kernels`` the dispatcher is offered
    torch.compile'd variants during it (its choices are cached apart from the others)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        offered = kernels.offer_compiled(compiled_kernels)
        try:
            logits = model(ids)
        finally:
            kernels.offer_compiled(offered)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip torch.compile of the whole model (masked and folded)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    vocab, seq, batch = (4096, 128, 8) if cpu else (32768, 1024, 8)
    small = spec(128, 2, 256, 2, vocab, seq) if cpu else spec(512, 8, 2048, 6, vocab, seq)
    target = dict(hidden=2 * small.hidden, heads=2 * small.heads, ffn=4 * small.ffn,
                  layers=2 * small.layers)
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq))
    grown = msgc.grow(build_model(small), (ids[:2],), **target)
    fused = msgc.fuse(copy.deepcopy(grown))
    folded_source = copy.deepcopy(grown)
    folded_source.set_masks(1.0)
    folded = msgc.fold(folded_source)
    for model in (grown, fused):
        model.set_masks(0.5)
    ids = ids.to(device)
    models = {"masked": grown, "fused": fused, "fused-compiled": copy.deepcopy(fused),
              "folded": folded}
    if not args.no_compile:
        models["compiled-masked"] = torch.compile(copy.deepcopy(grown))
        models["compiled-folded"] = torch.compile(copy.deepcopy(folded))
    timers = {name: step_timer(model.to(device).train(), ids, device,
                               compiled_kernels=name == "fused-compiled")
              for name, model in models.items()}
    for timer in timers.values():  # warm-up (compiles, and the dispatcher measures)
        timer(), timer()
    times = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            times[name].append(timer())
    median = {name: statistics.median(values) for name, values in times.items()}
    over_folded = {name: median[name] / median["folded"] for name in median}
    result = {
        "device": torch.cuda.get_device_name(device) if not cpu else "cpu",
        "model": {"start": vars(small), "grown_to": target, "batch": batch, "seq": seq},
        "median_step_seconds": median,
        "over_folded": over_folded,
        "dispatcher_choices": sorted({(key[0], choice) for key, choice
                                      in dispatch.cache_info().items()}),
        "target": "mid-ramp step <= 1.03x the folded model's step",
    }
    if not args.no_compile:
        result["compiled_masked_over_compiled_folded"] = (
            median["compiled-masked"] / median["compiled-folded"])
    for name in median:
        print(f"{name:>16}: {median[name] * 1e3:8.1f} ms/step  ({over_folded[name]:.3f}x folded)")
    if not args.no_compile:
        print(f"compiled masked / compiled folded: "
              f"{result['compiled_masked_over_compiled_folded']:.3f}x")
    path = args.json or RESULTS / f"step-overhead-{result['device'].replace(' ', '-').lower()}.json"
    write_result(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
