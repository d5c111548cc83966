"""`msgc inspect`: the dimension groups of a spec's model or of any model factory."""

import argparse
from pathlib import Path

import networkx as nx
import torch
import torch.nn as nn

from msgc.compiler import analyze
from msgc.errors import SpecError
from msgc.report import GroupReport
from msgc.spec import import_factory


def coupling_graph(reports: list[GroupReport]) -> nx.Graph:
    """Groups and the parameters they shape, as a bipartite networkx graph."""
    graph = nx.Graph()
    for i, report in enumerate(reports):
        group = f"{report.name}#{i}"
        graph.add_node(group, kind="group", label=f"{report.name} ({report.size})")
        for member in report.members:
            graph.add_node(member, kind="param", label=member)
            graph.add_edge(group, member)
    return graph


def to_dot(graph: nx.Graph) -> str:
    """Graphviz source of the coupling graph (groups as boxes, parameters as ellipses)."""
    lines = ["graph msgc {", "  rankdir=LR;"]
    for node, data in graph.nodes(data=True):
        shape = "box" if data["kind"] == "group" else "ellipse"
        lines.append(f'  "{node}" [label="{data["label"]}", shape={shape}];')
    lines += [f'  "{a}" -- "{b}";' for a, b in graph.edges()]
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_table(reports: list[GroupReport]) -> None:
    rows = [("group", "size", "members", "what growth does")] + [r.as_row() for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3])


def model_from_args(args: argparse.Namespace) -> tuple[nn.Module, tuple]:
    """The model to inspect and example token ids for it."""
    if args.module:
        model = import_factory(args.module, field="--module")()
        vocab = args.vocab_size
    else:
        from msgc.models import build_model
        from msgc.spec import CustomModelSpec, load_custom_model, load_spec

        spec = load_spec(args.spec)
        if isinstance(spec.model, CustomModelSpec):
            model = load_custom_model(spec.model)
            vocab = args.vocab_size
        else:
            model = build_model(spec.model)
            vocab = spec.model.vocab_size
    ids = torch.randint(0, vocab, (2, args.seq_len), generator=torch.Generator().manual_seed(0))
    return model, (ids,)


def cmd_inspect(args: argparse.Namespace) -> int:
    if bool(args.spec) == bool(args.module):
        raise SpecError("inspect: give a spec file or --module package.module:factory")
    if args.dot and not args.dot.parent.is_dir():
        raise SpecError(f"--dot {args.dot}: the folder {args.dot.parent} does not exist; "
                        "create it or write the file elsewhere")
    model, example_inputs = model_from_args(args)
    reports = analyze(model, example_inputs)
    print_table(reports)
    if args.dot:
        args.dot.write_text(to_dot(coupling_graph(reports)))
        print(f"wrote {args.dot}")
    return 0


def add_inspect(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="show the dimension groups msgc finds")
    parser.add_argument("spec", nargs="?", help="a spec file")
    parser.add_argument("--module", help="package.module:factory (imports and runs it)")
    parser.add_argument("--vocab-size", type=int, default=256, help="token ids for --module")
    parser.add_argument("--seq-len", type=int, default=8, help="example sequence length")
    parser.add_argument("--dot", type=Path, help="write the coupling graph (graphviz) here")
    parser.set_defaults(handler=cmd_inspect)
