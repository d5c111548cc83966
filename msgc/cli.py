"""The `msgc` command: one small function per subcommand, registered in `COMMANDS`.

Any `MsgcError` a subcommand raises is printed as ``error: <message>`` on stderr, without
a traceback, and the command exits 2. To add a subcommand, write an ``_add_<name>``
function that registers its parser with ``set_defaults(handler=...)`` and list it in
`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from msgc import __version__
from msgc.bench.commands import add_bench
from msgc.errors import MsgcError, SpecError
from msgc.graph import op_table
from msgc.inspect import add_inspect
from msgc.interop.commands import add_compile, add_export
from msgc.spec import FamilyModelSpec, Spec, load_spec, spec_json_schema
from msgc.train.compare import compare, rescale, scratch_spec
from msgc.train.data import TokenData, prepare_data
from msgc.train.distributed import MODES, Parallel
from msgc.train.flops import stage_cost
from msgc.train.models import vocab_size
from msgc.train.precision import resolve_device
from msgc.train.tokenizer import Tokenizer
from msgc.train.trainer import Trainer

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
"""The bundled spec files (in a source checkout)."""

Subparsers = Any  # argparse's private _SubParsersAction
SI_PREFIXES = (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6),
               ("k", 1e3))
INFO_COLUMNS = ("stage", "step", "hidden", "ffn", "heads", "kv_heads", "head_dim", "layers",
                "params", "train FLOPs/token", "lr x")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MsgcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand in `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="msgc", description="Masked Structural Growth of Transformers."
    )
    parser.add_argument("--version", action="version", version=f"msgc {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


# --- validate ---------------------------------------------------------------------------


def _add_validate(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("validate", help="check spec files")
    parser.add_argument("specs", nargs="+", type=Path, metavar="SPEC")
    parser.set_defaults(handler=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """Print OK or the error for each spec file; 2 if any is invalid."""
    status = 0
    for path in args.specs:
        try:
            load_spec(path)
        except SpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
        else:
            print(f"OK {path}")
    return status


# --- schema -----------------------------------------------------------------------------


def _add_schema(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON Schema of spec files")
    parser.set_defaults(handler=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the spec file format's JSON Schema."""
    print(json.dumps(spec_json_schema(), indent=2))
    return 0


# --- info -------------------------------------------------------------------------------


def _add_info(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="sizes, parameters and training FLOPs of every stage of a spec"
    )
    parser.add_argument("spec", type=Path, metavar="SPEC")
    parser.set_defaults(handler=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """Print a table with one row per stage, then the schedule's compute estimate."""
    spec = load_spec(args.spec)
    archs = spec.stage_archs()
    if not isinstance(spec.model, FamilyModelSpec):
        print(f"{spec.name}: {spec.model.module}, {spec.train.steps} steps")
        rows = [_stage_cells(spec, i, step, arch) for i, (step, arch) in enumerate(archs)]
        print(_format_table(INFO_COLUMNS, rows))
        return 0
    costs = [stage_cost(arch, spec.train.seq_len) for _, arch in archs]
    rows = [
        _stage_cells(spec, i, step, arch.sizes() | {"head_dim": arch.head_dim})
        | {"params": _si(params), "train FLOPs/token": _si(flops)}
        for i, ((step, arch), (params, flops)) in enumerate(zip(archs, costs, strict=True))
    ]
    print(f"{spec.name}: {spec.model.family}, {spec.train.steps} steps")
    print(_format_table(INFO_COLUMNS, rows))
    print(_compute_summary(spec, [flops for _, flops in costs]))
    return 0


def _stage_cells(spec: Spec, index: int, step: int, sizes: dict[str, int]) -> dict[str, str]:
    """The stage, step, size and learning-rate multiplier cells of one table row."""
    return ({"stage": str(index), "step": str(step)} | {k: str(v) for k, v in sizes.items()}
            | {"lr x": f"{spec.growth.lr_scales()[index]:g}"})


def _compute_summary(spec: Spec, flops_per_token: list[int]) -> str:
    """Total training FLOPs of the schedule against the final model trained from scratch.

    `flops_per_token` holds one value per entry of `spec.stage_archs()`. Each stage runs
    at its grown size from its growth step on (masked parts compute at full size during
    the ramp).
    """
    train = spec.train
    tokens_per_step = train.batch_size * train.seq_len * train.grad_accum_steps
    starts = [step for step, _ in spec.stage_archs()]
    ends = [*starts[1:], train.steps]
    grown = sum(
        flops * (end - start)
        for flops, start, end in zip(flops_per_token, starts, ends, strict=True)
    )
    scratch = flops_per_token[-1] * train.steps
    return (
        f"training compute: {_si(grown * tokens_per_step)}FLOP with growth, "
        f"{_si(scratch * tokens_per_step)}FLOP for the final model from scratch "
        f"(growth needs {scratch / grown:.2f}x less)"
    )


def _si(value: float) -> str:
    """A number with an SI suffix and 3 significant digits: 1234567 -> '1.23M'."""
    for suffix, scale in SI_PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _format_table(columns: Sequence[str], rows: list[dict[str, str]]) -> str:
    """Right-aligned columns; a cell a row lacks shows as '?'."""
    cells = [list(columns)] + [[row.get(c, "?") for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    )


# --- train ------------------------------------------------------------------------------


def _add_train(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a spec's growth schedule into a run directory"
    )
    parser.add_argument("spec", type=Path, metavar="SPEC")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="RUN_DIR",
                       help="a new run directory: spec, metrics.jsonl, checkpoints, model, plot")
    where.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its newest valid checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --out: replace the run RUN_DIR holds (else refused)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="scale the schedule to N steps (stages, ramp, warmup with it)")
    parser.add_argument("--distributed", choices=MODES, metavar="{" + ",".join(MODES) + "}",
                        help="train on the processes torchrun starts (torchrun --nproc_per_node "
                             "N -m msgc train ...): ddp replicates the model, fsdp shards it "
                             "(FSDP2); batch_size stays the global batch")
    parser.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Train the spec; print the final figures and where the outputs are (rank 0)."""
    spec = _spec_with_steps(load_spec(args.spec), args.steps)
    parallel = Parallel.single()
    if args.distributed:
        parallel = Parallel.from_env(args.distributed, resolve_device(spec.train.device))
    try:
        return _train(spec, args, parallel)
    finally:
        parallel.close()


def _train(spec: Spec, args: argparse.Namespace, parallel: Parallel) -> int:
    """Train `spec` in `parallel`'s processes; rank 0 prints the figures."""
    out = args.resume or args.out
    with parallel.main_first():  # rank 0 fills the tokenizer and token caches
        tokenizer, data = _prepare(spec)
    trainer = Trainer(spec, tokenizer, data, out_dir=out, resume=args.resume is not None,
                      parallel=parallel, overwrite=args.overwrite)
    if trainer.resumed_from is not None and parallel.is_main:
        print(f"resuming {out} at step {trainer.resumed_from}", file=sys.stderr)
    result = trainer.run()
    parallel.wait_all()
    if not parallel.is_main:
        return 0
    print(f"{spec.name}: {result.steps} steps in {result.wall_seconds:.1f} s, "
          f"{_si(result.flops)}FLOP, {_si(result.params)} parameters")
    print(f"val loss {result.val_loss:.4f}, val bpb {result.val_bpb:.4f}, "
          f"test bpb {result.test_bpb:.4f}")
    print(f"run directory: {out} (plot: {out / 'loss.png'})")
    return 0


def _spec_with_steps(spec: Spec, steps: int | None) -> Spec:
    """`spec`, or `spec` rescaled to `steps` optimizer steps."""
    if steps is None:
        return spec
    if steps < 1:
        raise SpecError(f"--steps must be a positive number of steps, not {steps}")
    return rescale(spec, steps / spec.train.steps)


def _prepare(spec: Spec) -> tuple[Tokenizer, TokenData]:
    """The spec's corpus, tokenizer and token arrays (cached under $MSGC_CACHE)."""
    train = spec.train
    return prepare_data(train.data, train.tokenizer, vocab_size(spec))


# --- compare ----------------------------------------------------------------------------

INTERLEAVE_BLOCK = 20
"""Steps per turn of `msgc compare --interleave`."""
COMPARE_COLUMNS = ("run", "steps", "params", "wall s", "FLOPs", "val loss", "val bpb",
                   "test bpb")


def _add_compare(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="train the final model from scratch and the MSG schedule; compare"
    )
    parser.add_argument("spec", type=Path, metavar="SPEC")
    _add_compare_options(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the runs already under --out (else refused)")
    parser.set_defaults(handler=cmd_compare)


def _add_compare_options(parser: argparse.ArgumentParser) -> None:
    """The options `compare` and `demo` share."""
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write each run's directory and the plot under DIR")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="scale the schedule to N steps (stages, ramp, warmup with it)")
    parser.add_argument("--match-quality", action="store_true",
                        help="also run MSG with budgets stretched 1.25x, 1.5x and 2x")
    parser.add_argument("--interleave", type=int, nargs="?", const=INTERLEAVE_BLOCK,
                        metavar="N", help="train the arms in alternating blocks of N steps "
                        f"(default {INTERLEAVE_BLOCK}) in one process, so the machine's speed "
                        "drifting falls on both alike (same losses as one after the other)")


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison; print its table, write the JSON report and plot."""
    _compare(_spec_with_steps(load_spec(args.spec), args.steps), args)
    return 0


def _compare(spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the data, compare, print the table; write --json; the report."""
    if args.interleave is not None and args.interleave < 1:
        raise SpecError(f"--interleave: a block is a positive number of steps, not "
                        f"{args.interleave}")
    scratch_spec(spec)  # a spec without a scratch model is refused before the data work
    tokenizer, data = _prepare(spec)
    report = compare(spec, tokenizer, data, out_dir=args.out, match_quality=args.match_quality,
                     overwrite=args.overwrite, interleave=args.interleave)
    print(format_compare(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report: {args.json}")
    return report


def format_compare(report: dict[str, Any]) -> str:
    """The comparison as a table of runs and a line of ratios."""
    rows = [
        {"run": label, "steps": str(run["steps"]), "params": _si(run["params"]),
         "wall s": f"{run['wall_seconds']:.1f}", "FLOPs": _si(run["flops"]),
         "val loss": f"{run['val_loss']:.4f}", "val bpb": f"{run['val_bpb']:.4f}",
         "test bpb": f"{run['test_bpb']:.4f}"}
        for label, run in report["runs"].items()
    ]
    lines = [f"{report['spec']} on {report['device']}: MSG vs the final model from scratch",
             _format_table(COMPARE_COLUMNS, rows),
             f"speedup (wall{', interleaved' if report.get('interleave') else ''}) "
             f"{report['speedup_wall']:.2f}x, speedup (FLOPs) "
             f"{report['speedup_flops']:.2f}x, test bpb gap {report['bpb_gap']:+.2%}"]
    if "speedup_to_target" in report:
        target = report["speedup_to_target"]
        lines.append("speedup to scratch's val loss: " + (
            f"{target:.2f}x ({report['target_run']})" if target is not None
            else "not reached by any MSG budget"))
    if report["plot"]:
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)


# --- demo -------------------------------------------------------------------------------

DEMO_SPEC = SPECS_DIR / "gpt-tiny.yaml"
DEMO_OUT = Path("runs") / "demo"
DEMO_STEPS = 800
"""gpt-tiny's 2000-step schedule scaled to 800 steps: both runs take 10 to 16 minutes on two
CPU cores (idle 2-core machines measured 0.36 to 0.82 s per 16x128-token step at the final
size)."""


def _add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="validate the bundled specs, then compare MSG with scratch on gpt-tiny"
    )
    parser.add_argument("--spec", type=Path, default=DEMO_SPEC, metavar="SPEC",
                        help="the spec to compare (default: the bundled gpt-tiny)")
    _add_compare_options(parser)
    # the demo's runs are its own: a second `make demo` replaces the first's
    parser.set_defaults(handler=cmd_demo, out=DEMO_OUT, steps=DEMO_STEPS, overwrite=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Validate every bundled spec, build the corpus and tokenizer, run the comparison."""
    paths = sorted(SPECS_DIR.glob("*.yaml"))
    if not paths:
        raise SpecError(f"{SPECS_DIR}: no bundled specs found; run from a source checkout")
    for path in paths:
        spec = load_spec(path)
        print(f"OK {path.name}: {spec.name}, {len(spec.growth.stages)} growth stages")
    spec = _spec_with_steps(load_spec(args.spec), args.steps)
    print(f"comparing {spec.name}: {spec.train.steps} steps of {spec.train.batch_size}x"
          f"{spec.train.seq_len} tokens, growth at steps "
          f"{', '.join(str(stage.step) for stage in spec.growth.stages)}", flush=True)
    _compare(spec, args)
    return 0


# --- ops ------------------------------------------------------------------------------------


def _add_ops(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "ops", help="the ATen ops and what msgc does with a growing dimension in each",
        description="Print each ATen op's rule kind and what it does with a growing dimension "
                    "(docs/ops.md is the same table).")
    parser.add_argument("--kind", help="only the ops of this kind: "
                        + ", ".join(op_table.KINDS))
    parser.add_argument("--core", action="store_true", help="only the core ATen opset")
    parser.add_argument("--markdown", action="store_true", help="print docs/ops.md")
    parser.set_defaults(handler=cmd_ops)


def cmd_ops(args: argparse.Namespace) -> int:
    """Print the op table (or its markdown page), filtered by kind and core."""
    if args.markdown:
        print(op_table.markdown(), end="")
        return 0
    if args.kind is not None and args.kind not in op_table.KINDS:
        raise MsgcError(f"--kind {args.kind}: no such kind; use one of "
                        f"{', '.join(op_table.KINDS)}")
    rows = [r for r in op_table.op_rows()
            if (not args.core or r.core) and (args.kind is None or r.kind == args.kind)]
    print(op_table.text_table(rows) if rows else "no ops of that kind")
    return 0


COMMANDS: list[Callable[[Subparsers], None]] = [
    _add_validate, _add_schema, _add_info, add_inspect, _add_train, _add_compare, add_export,
    add_compile, _add_demo, add_bench, _add_ops,
]
"""Every subcommand's registration function, in the order `--help` lists them."""
