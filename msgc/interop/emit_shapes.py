"""Shapes for the emitted code's comments, with batch and sequence sizes symbolic.

The graph runs twice, on inputs of two batch and sequence sizes; a size that moves with the
batch is `B`, one that moves with the sequence `T` (and `B*T`), one that stays is a number.
Where the second run fails (graphs traced at fixed sizes) every size is a number.
"""

from typing import Any

import torch
import torch.fx as fx

Summary = Any  # ("tensor", sizes, dtype), an int, a tuple of summaries, or None


def node_summaries(gm: fx.GraphModule, example_inputs: tuple | None) -> dict[fx.Node, Summary]:
    """Per node, what it computes: tensor sizes (labels like "B"), ints (labels), tuples."""
    first = tuple(example_inputs) if example_inputs is not None else _zeros_like_meta(gm)
    device = next(iter(gm.state_dict().values()), torch.empty(0)).device
    first = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in first)
    runs = _run(gm, first)
    if runs is None:  # the inputs do not run: no shapes
        return {}
    second = _run(gm, _resized(first)) or runs
    symbols = _symbols(first)
    return {n: _labelled(v, second.get(n, v), symbols) for n, v in runs.items()}


def shape_comment(summary: Summary) -> str | None:
    """`# (B, T, 256)` for a tensor, `# 2 x (B, 8, T, 16)` for a tuple of equal tensors."""
    if _is_tensor(summary):
        return f"# {_sizes(summary)}"
    if isinstance(summary, tuple) and summary and all(_is_tensor(s) for s in summary):
        if all(s[1] == summary[0][1] for s in summary):
            return f"# {len(summary)} x {_sizes(summary[0])}"
    return None


def _sizes(summary: Summary) -> str:
    dims = summary[1]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def _is_tensor(summary: Summary) -> bool:
    return isinstance(summary, tuple) and len(summary) == 3 and summary[0] == "tensor"


def _zeros_like_meta(gm: fx.GraphModule) -> tuple:
    """Zeros shaped like the placeholders' recorded shapes (token ids 0 are valid ids)."""
    inputs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        meta = node.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):
            break
        inputs.append(torch.zeros(tuple(meta.shape), dtype=meta.dtype))
    return tuple(inputs)


def _resized(inputs: tuple) -> tuple:
    """The inputs with one more row and one position fewer (one more if only two)."""
    out = []
    for x in inputs:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            out.append(x)
            continue
        shape = list(x.shape)
        shape[0] += 1
        if len(shape) > 1:
            shape[1] += -1 if shape[1] > 2 else 1
        flat = x.detach().flatten()
        count = int(torch.Size(shape).numel())
        repeats = -(-count // max(flat.numel(), 1))
        out.append(flat.repeat(repeats)[:count].reshape(shape))
    return tuple(out)


def _symbols(inputs: tuple) -> dict[str, tuple[int, int]]:
    """B and T (and B*T): their sizes in the first run and in the second."""
    x = next((t for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    if x is None:
        return {}
    (after,) = _resized((x,))
    symbols = {"B": (x.shape[0], after.shape[0])}
    if x.dim() > 1:
        symbols["T"] = (x.shape[1], after.shape[1])
        symbols["B*T"] = (x.shape[0] * x.shape[1], after.shape[0] * after.shape[1])
    return symbols


def _run(gm: fx.GraphModule, inputs: tuple) -> dict[fx.Node, Summary] | None:
    """Every node's summary for one run, in eval mode; None where the graph does not run."""
    values: dict[fx.Node, Summary] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            values[n] = _summary(out)
            return out

    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            Recorder(gm).run(*inputs)
    except Exception:  # a graph traced at fixed sizes: no second run
        return None
    finally:
        gm.train(was_training)
    return values


def _summary(value: Any) -> Summary:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(int(d) for d in value.shape), value.dtype)
    if isinstance(value, (bool, float)) or value is None:
        return None
    if isinstance(value, (int, torch.SymInt)):
        return int(value)
    if isinstance(value, (tuple, list)):
        return tuple(_summary(v) for v in value)
    return None


def _labelled(first: Summary, second: Summary, symbols: dict[str, tuple[int, int]]) -> Summary:
    """`first` with each size replaced by its label ("B", "T", "B*T", "?" or the number)."""
    if _is_tensor(first):
        dims = second[1] if _is_tensor(second) and len(second[1]) == len(first[1]) else first[1]
        sizes = tuple(_label(a, b, symbols) for a, b in zip(first[1], dims, strict=True))
        return ("tensor", sizes, first[2])
    if isinstance(first, int):
        return _label(first, second if isinstance(second, int) else first, symbols)
    if isinstance(first, tuple):
        other = second if isinstance(second, tuple) and len(second) == len(first) else first
        return tuple(_labelled(a, b, symbols) for a, b in zip(first, other, strict=True))
    return first


def _label(a: int, b: int, symbols: dict[str, tuple[int, int]]) -> str:
    if a == b:
        return str(a)
    return next((name for name, sizes in symbols.items() if sizes == (a, b)), "?")
