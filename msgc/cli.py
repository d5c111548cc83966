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

import torch
from torch import nn

from msgc import __version__
from msgc.errors import MsgcError, SpecError
from msgc.models import build_model, count_parameters
from msgc.spec import FamilyModelSpec, Spec, load_spec, spec_json_schema

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
"""The bundled spec files (in a source checkout)."""

Subparsers = Any  # argparse's private _SubParsersAction
SI_PREFIXES = (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6),
               ("k", 1e3))
INFO_COLUMNS = ("stage", "step", "hidden", "ffn", "heads", "kv_heads", "head_dim", "layers",
                "params", "train FLOPs/token")


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
        rows = [_stage_cells(i, step, arch) for i, (step, arch) in enumerate(archs)]
        print(_format_table(INFO_COLUMNS, rows))
        return 0
    costs = [_stage_cost(arch, spec.train.seq_len) for _, arch in archs]
    rows = [
        _stage_cells(i, step, arch.sizes() | {"head_dim": arch.head_dim})
        | {"params": _si(params), "train FLOPs/token": _si(flops)}
        for i, ((step, arch), (params, flops)) in enumerate(zip(archs, costs, strict=True))
    ]
    print(f"{spec.name}: {spec.model.family}, {spec.train.steps} steps")
    print(_format_table(INFO_COLUMNS, rows))
    print(_compute_summary(spec, [flops for _, flops in costs]))
    return 0


def _stage_cells(index: int, step: int, sizes: dict[str, int]) -> dict[str, str]:
    """The stage, step and size cells of one table row."""
    return {"stage": str(index), "step": str(step)} | {k: str(v) for k, v in sizes.items()}


def _stage_cost(arch: FamilyModelSpec, seq_len: int) -> tuple[int, int]:
    """(parameters, training FLOPs per token) of the reference model for `arch`."""
    model = _build_on_meta(arch)
    return count_parameters(model), train_flops_per_token(model, arch, seq_len)


def _build_on_meta(arch: FamilyModelSpec) -> nn.Module:
    """The reference model for `arch`, on the meta device (shapes only, instant)."""
    with torch.device("meta"):
        return build_model(arch)


def matmul_parameters(model: nn.Module) -> int:
    """Parameters other than pure embedding lookups (a head tied to an embedding counts).

    Norm weights and biases are included; they are a rounding error next to the matmuls.
    """
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    used_by_other_modules = {
        id(p)
        for module in model.modules()
        if not isinstance(module, nn.Embedding)
        for p in module.parameters(recurse=False)
    }
    return sum(
        p.numel()
        for p in model.parameters()
        if id(p) not in lookups or id(p) in used_by_other_modules
    )


def train_flops_per_token(model: nn.Module, arch: FamilyModelSpec, seq_len: int) -> int:
    """Training FLOPs per token: 6 N + 6 L T d_attn (causal) or 6 N + 12 L T d_attn (bert).

    The Kaplan et al. (2020) / PaLM (Chowdhery et al., 2022) count: a forward pass costs
    2 FLOPs per matmul parameter and token, N = `matmul_parameters` (embedding lookups
    excluded, the output head included), plus the attention score and value matmuls,
    4 T d_attn per layer and token with d_attn = heads * head_dim, T = seq_len. A causal
    model (gpt2, llama) computes half of those on average. Backward costs twice the
    forward, so training costs 3x the forward.
    """
    attention = 4 * arch.layers * seq_len * arch.heads * arch.head_dim
    if arch.family != "bert":
        attention //= 2
    return 3 * (2 * matmul_parameters(model) + attention)


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


# --- demo -------------------------------------------------------------------------------


def _add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="validate the bundled specs and run each starting model once"
    )
    parser.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Validate every bundled spec; build each family model's start on CPU and run it once."""
    paths = sorted(SPECS_DIR.glob("*.yaml"))
    if not paths:
        raise SpecError(f"{SPECS_DIR}: no bundled specs found; run from a source checkout")
    for path in paths:
        spec = load_spec(path)
        print(f"OK {path.name}: {spec.name}, {len(spec.growth.stages)} growth stages")
        if isinstance(spec.model, FamilyModelSpec):
            _demo_forward(spec.model, spec.train.seq_len)
    return 0


def _demo_forward(arch: FamilyModelSpec, seq_len: int) -> None:
    """Build `arch` on CPU, print its size and the output shape of one random batch."""
    torch.manual_seed(0)
    model = build_model(arch).eval()
    tokens = torch.randint(0, arch.vocab_size, (2, min(seq_len, 16)))
    with torch.no_grad():
        output = model(tokens)
    print(f"   {arch.family}: {_si(count_parameters(model))} parameters, "
          f"input {tuple(tokens.shape)} -> output {tuple(output.shape)}")


COMMANDS: list[Callable[[Subparsers], None]] = [_add_validate, _add_schema, _add_info, _add_demo]
"""Every subcommand's registration function, in the order `--help` lists them."""
