"""Python source for fx nodes: calls, operators, methods and constants.

`Writer.node` renders one node given the expressions of its argument nodes. Calls read
like hand-written PyTorch: `x + y`, `F.silu(x)`, `x.view(B, T, 8, 32)`; the ATen ops of
exported graphs are written as the same calls where they are the same op, and as
`torch.ops.aten.<op>.<overload>(...)` otherwise. Dropout follows `self.training`.
"""

import builtins
import keyword
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from msgc import ops
from msgc.errors import GraphError
from msgc.ops import AttentionDropout

# precedence, loosest first: the operand of an operator binds at least as tightly as it
COMPARE, BOR, BXOR, BAND, SHIFT, SUM, TERM, UNARY, POWER, NUMBER, PRIMARY, ATOM = (
    5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)

BINARY = {
    operator.add: ("+", SUM), operator.sub: ("-", SUM), operator.mul: ("*", TERM),
    operator.truediv: ("/", TERM), operator.floordiv: ("//", TERM), operator.mod: ("%", TERM),
    operator.matmul: ("@", TERM), operator.pow: ("**", POWER), operator.lshift: ("<<", SHIFT),
    operator.rshift: (">>", SHIFT), operator.and_: ("&", BAND), operator.xor: ("^", BXOR),
    operator.or_: ("|", BOR), operator.eq: ("==", COMPARE), operator.ne: ("!=", COMPARE),
    operator.lt: ("<", COMPARE), operator.le: ("<=", COMPARE), operator.gt: (">", COMPARE),
    operator.ge: (">=", COMPARE),
}
UNARY_OPS = {operator.neg: "-", operator.pos: "+", operator.invert: "~"}

aten = torch.ops.aten
ATEN_OPERATORS = {aten.add.Tensor: operator.add, aten.sub.Tensor: operator.sub,
                  aten.mul.Tensor: operator.mul, aten.div.Tensor: operator.truediv,
                  aten.matmul.default: operator.matmul, aten.neg.default: operator.neg}
ATEN_FUNCTIONAL = {"linear", "silu", "gelu", "relu", "layer_norm", "rms_norm"}
ATEN_METHODS = {"view", "reshape", "transpose", "permute", "contiguous", "unsqueeze", "squeeze",
                "chunk", "split", "mean", "sum", "pow", "rsqrt", "sqrt", "exp", "tanh",
                "sigmoid", "softmax", "repeat_interleave", "flatten", "t", "masked_fill", "narrow"}
ATEN_TORCH = {"arange", "cat", "stack", "zeros", "ones", "full", "where", "cos", "sin"}
DEFAULTS = {F.gelu: {"approximate": "none"}}  # keyword arguments left out at these values
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
             "enable_gqa")
SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                 "enable_gqa": False}
HELPERS = {ops.masked_layer_norm: "masked_layer_norm", ops.masked_rms_norm: "masked_rms_norm",
           ops.masked_mean: "masked_mean", ops.depth_mix: "depth_mix"}
RESERVED = set(keyword.kwlist) | set(dir(builtins)) | {"self", "torch", "nn", "F", "math",
                                                       "block", *HELPERS.values()}


@dataclass(frozen=True)
class Expr:
    """Source text, how tightly it binds, and for calls the callee and argument texts."""

    text: str
    prec: int = ATOM
    call: tuple[str, tuple[str, ...]] | None = None

    def at(self, prec: int) -> str:
        """The text, parenthesized where it binds looser than `prec`."""
        return self.text if self.prec >= prec else f"({self.text})"


def identifier(name: str) -> str:
    """`name` as a usable variable name: letters, digits and _, no keyword or builtin."""
    text = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "v"
    text = f"_{text}" if text[0].isdigit() else text
    return f"{text}_" if text in RESERVED else text


class Writer:
    """Renders nodes; records which of msgc's masked ops (helpers) the code calls."""

    def __init__(self, masked: bool) -> None:
        self.masked = masked
        self.helpers: set[str] = set()

    def node(self, gm: fx.GraphModule, node: fx.Node, value: Callable[[fx.Node], Expr]) -> Expr:
        """The expression node computes, its argument nodes rendered by `value`."""
        self.value = value
        if node.op == "call_method":
            receiver, *rest = node.args
            return self.method(self.arg(receiver), str(node.target), rest, node.kwargs)
        if node.op == "call_module":
            return self.module(node, gm.get_submodule(str(node.target)))
        return self.function(node, node.target, node.args, node.kwargs)

    def arg_with(self, value: Any, lookup: Callable[[fx.Node], Expr]) -> Expr:
        """A constant or structure of nodes, the nodes rendered by `lookup`."""
        self.value = lookup
        return self.arg(value)

    # --- calls ------------------------------------------------------------------------------

    def function(self, node: fx.Node, fn: Any, args: tuple, kwargs: dict) -> Expr:
        if fn in BINARY and len(args) == 2 and not kwargs:
            return self.binary(fn, *args)
        if fn in UNARY_OPS and len(args) == 1:
            return Expr(UNARY_OPS[fn] + self.arg(args[0]).at(UNARY), UNARY)
        if fn is operator.getitem:
            return Expr(f"{self.arg(args[0]).at(PRIMARY)}[{self.index(args[1])}]", PRIMARY)
        if fn is builtins.getattr and len(args) == 2:
            return Expr(f"{self.arg(args[0]).at(PRIMARY)}.{args[1]}", PRIMARY)
        if fn in HELPERS and self.masked:
            self.helpers.add(HELPERS[fn])
            return self.call(HELPERS[fn], args, kwargs)
        if fn in (F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default):
            return self.sdpa(args, kwargs)
        if isinstance(fn, torch._ops.OpOverload):
            return self.aten(node, fn, args, kwargs)
        kwargs = {k: v for k, v in kwargs.items() if DEFAULTS.get(fn, {}).get(k, ...) != v}
        return self.call(self.callee(node, fn), args, kwargs)

    def aten(self, node: fx.Node, fn: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Expr:
        """An ATen op as the Python call that is the same op, else torch.ops.aten.*."""
        name = fn.overloadpacket.__name__
        if fn in ATEN_OPERATORS and not kwargs:
            return self.function(node, ATEN_OPERATORS[fn], args, kwargs)
        if fn is aten.sym_size.int:
            return self.method(self.arg(args[0]), "size", args[1:], {})
        if fn is aten.embedding.default and len(args) == 2 and not kwargs:
            return self.call("F.embedding", (args[1], args[0]), {})
        if name in ATEN_FUNCTIONAL and (name != "layer_norm" or len(args) <= 5):
            return self.call(f"F.{name}", args, kwargs)
        if name in ATEN_METHODS and args and isinstance(args[0], fx.Node):
            return self.method(self.arg(args[0]), name, args[1:], kwargs)
        if name in ATEN_TORCH:  # factories: pin_memory=False is the default
            kwargs = {k: v for k, v in kwargs.items() if (k, v) != ("pin_memory", False)}
            return self.call(f"torch.{name}", args, kwargs)
        namespace = fn.namespace
        if namespace == "msgc":
            raise GraphError(f"emit: node {node.name} calls msgc's fused kernel {fn}; emit the "
                             "unfused grown module (without msgc.fuse)")
        return self.call(f"torch.ops.{namespace}.{name}.{fn._overloadname}", args, kwargs)

    def module(self, node: fx.Node, module: nn.Module) -> Expr:
        """Dropout modules, written as the functional calls they make."""
        if isinstance(module, AttentionDropout):
            return self.sdpa(node.args, node.kwargs, train_p=module.p)
        if isinstance(module, nn.Dropout):
            args = (node.args[0], module.p)
            return self.call("F.dropout", args, {}, extra=("self.training",))
        raise GraphError(f"emit: node {node.name} calls module {type(module).__name__}, "
                         "which the emitted source cannot recreate")

    def sdpa(self, args: tuple, kwargs: dict, train_p: float | None = None) -> Expr:
        """scaled_dot_product_attention with keyword options, defaults left out; `train_p`
        is a dropout that follows train/eval."""
        named = {**dict(zip(SDPA_ARGS, args, strict=False)), **kwargs}
        options = {k: v for k, v in named.items() if k in SDPA_DEFAULTS
                   and not (SDPA_DEFAULTS[k] is v or (k == "dropout_p" and v == 0.0))}
        texts = [self.arg(named[k]).text for k in SDPA_ARGS[:3]]
        if train_p:
            texts.append(f"dropout_p={train_p!r} if self.training else 0.0")
        texts += [f"{k}={self.arg(v).text}" for k, v in options.items()]
        callee = "F.scaled_dot_product_attention"
        return Expr(f"{callee}({', '.join(texts)})", PRIMARY, (callee, tuple(texts)))

    def callee(self, node: fx.Node, fn: Any) -> str:
        """The source name of a function: F.*, torch.* or math.*."""
        name = getattr(fn, "__name__", "")
        if name and getattr(F, name, None) is fn:
            return f"F.{name}"
        if name and getattr(torch, name, None) is fn:
            return f"torch.{name}"
        if name and getattr(math, name, None) is fn:
            return f"math.{name}"
        if "msgc" in (getattr(fn, "__module__", None) or ""):
            raise GraphError(f"emit: the graph still calls msgc op {name} (node {node.name}); "
                             "fold it first, or emit it masked")
        raise GraphError(f"emit: node {node.name} calls {fn!r}, which has no name in torch "
                         "that the emitted source could call")

    def call(self, callee: str, args: tuple, kwargs: dict, extra: tuple[str, ...] = ()) -> Expr:
        texts = [self.arg(a).text for a in args] + list(extra)
        texts += [f"{k}={self.arg(v).text}" for k, v in kwargs.items()]
        return Expr(f"{callee}({', '.join(texts)})", PRIMARY, (callee, tuple(texts)))

    def method(self, receiver: Expr, name: str, args, kwargs: dict) -> Expr:
        head = f"{receiver.at(PRIMARY)}.{name}"
        return self.call(head, tuple(args), dict(kwargs))

    def binary(self, fn: Any, left: Any, right: Any) -> Expr:
        symbol, prec = BINARY[fn]
        lhs, rhs = self.arg(left), self.arg(right)
        if fn is operator.pow:  # right-associative
            return Expr(f"{lhs.at(prec + 1)} ** {rhs.at(UNARY)}", prec)
        left_prec = prec + 1 if prec == COMPARE else prec
        return Expr(f"{lhs.at(left_prec)} {symbol} {rhs.at(prec + 1)}", prec)

    # --- constants --------------------------------------------------------------------------

    def arg(self, value: Any) -> Expr:
        """An argument: a node's expression or a constant's source."""
        if isinstance(value, fx.Node):
            return self.value(value)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return Expr(repr(value))
        if isinstance(value, int):
            return Expr(repr(value), NUMBER if value >= 0 else UNARY)
        if isinstance(value, float):
            return _float(value)
        if isinstance(value, tuple):
            items = [self.arg(v).text for v in value]
            return Expr(f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})")
        if isinstance(value, list):
            return Expr(f"[{', '.join(self.arg(v).text for v in value)}]")
        if isinstance(value, dict):
            return Expr("{" + ", ".join(f"{k!r}: {self.arg(v).text}"
                                        for k, v in value.items()) + "}")
        if isinstance(value, slice):
            return Expr(f"slice({self.arg(value.start).text}, {self.arg(value.stop).text}, "
                        f"{self.arg(value.step).text})", PRIMARY)
        if value is Ellipsis:
            return Expr("...")
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            return Expr(str(value), PRIMARY)
        if isinstance(value, torch.device):
            return Expr(f"torch.device({str(value)!r})", PRIMARY)
        raise GraphError(f"emit: cannot write the constant {value!r} in source")

    def index(self, value: Any) -> str:
        """A subscript: slices as a:b, tuples without parentheses."""
        if isinstance(value, tuple):
            items = [self.index(v) for v in value]
            return f"{items[0]}," if len(items) == 1 else ", ".join(items)
        if isinstance(value, slice):
            parts = ["" if p is None else self.arg(p).text
                     for p in (value.start, value.stop, value.step)]
            return ":".join(parts if parts[2] else parts[:2])
        return self.arg(value).text


def _float(value: float) -> Expr:
    if math.isinf(value):
        return Expr('float("inf")', PRIMARY) if value > 0 else Expr('-float("inf")', UNARY)
    if math.isnan(value):
        return Expr('float("nan")', PRIMARY)
    return Expr(repr(value), NUMBER if value >= 0 else UNARY)
