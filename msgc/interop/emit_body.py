"""Forward functions of the emitted code: statements, variable names, inlining.

A node used once, by the next statement that needs it, is written inside that statement
(`q = self.q_proj(h).view(B, T, 8, 32).transpose(1, 2)`) unless the line grows too long;
everything else is a statement. Variables are named after the model's modules and the
values they continue (`x = x + ...`); a name is reused once its value is dead.
"""

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc import ops
from msgc.errors import GraphError
from msgc.interop.emit_expr import PRIMARY, Expr, Writer, identifier
from msgc.interop.emit_layout import Layers, access
from msgc.interop.emit_shapes import Summary, shape_comment
from msgc.ops import AttentionDropout

SOFT_LIMIT = 88  # a statement longer than this writes its inlined parts on their own
HARD_LIMIT = 100  # ruff's line length
RANDOM = {F.dropout, torch.dropout, torch.rand, torch.randn, torch.randint, torch.bernoulli}
MASKED_NORMS = {ops.masked_layer_norm, ops.masked_rms_norm}
SDPA = {F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention.default}


@dataclass
class BlockCall:
    """Blocks called in the model's forward: one, or a loop over consecutive ones."""

    container: str  # module path of the block list
    indices: list[int]
    loop: bool
    inputs: list  # the block's inputs (nodes, or targets of tensors), carried first
    carried: bool  # whether inputs[0] is the residual stream that each block passes on
    output: fx.Node
    members: set[fx.Node]  # every block's nodes
    size: int  # how many blocks the container holds


Key = fx.Node | str  # a value: a node, or a tensor by its target


class Source:
    """Whole-graph facts the bodies share: aliases, users, shapes, layers, base names."""

    def __init__(self, gm: fx.GraphModule, summaries: dict[fx.Node, Summary], layers: Layers,
                 writer: Writer, rename) -> None:
        self.gm, self.summaries, self.layers, self.writer = gm, summaries, layers, writer
        self.rename = rename  # graph target -> emitted state-dict key
        self.aliases = {n: n.args[0] for n in gm.graph.nodes if _is_identity(gm, n)}
        self.users: dict[fx.Node, list[fx.Node]] = {}
        for node in gm.graph.nodes:
            for arg in node.all_input_nodes:
                if node not in self.aliases:
                    self.users.setdefault(self.resolve(arg), []).append(node)
        self._attr_users: dict[str, list[fx.Node]] = {}
        for node in gm.graph.find_nodes(op="get_attr"):
            self._attr_users.setdefault(str(node.target), []).extend(self.users_of(node))
        self.forced: dict[fx.Node, str] = {}
        self.hints = self._hints()
        self._bases: dict[fx.Node, str] = {}

    def resolve(self, node):
        while node in self.aliases:
            node = self.aliases[node]
        return node

    def users_of(self, node: fx.Node) -> list[fx.Node]:
        return self.users.get(node, [])

    def _hints(self) -> dict[fx.Node, str]:
        """q, k, v for the chains of single-use nodes that feed attention."""
        hints = {}
        for node in self.gm.graph.nodes:
            if not (node.target in SDPA or self._is_attention_dropout(node)):
                continue
            for name, arg in zip("qkv", node.args[:3], strict=False):
                arg = self.resolve(arg)
                while isinstance(arg, fx.Node) and arg.op in ("call_function", "call_method"):
                    hints.setdefault(arg, name)
                    first = self.resolve(arg.args[0]) if arg.args else None
                    if not isinstance(first, fx.Node) or len(self.users_of(first)) != 1:
                        break
                    arg = first
        return hints

    def _is_attention_dropout(self, node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(
            self.gm.get_submodule(str(node.target)), AttentionDropout)

    def base(self, node: fx.Node) -> str:
        """The name a node's variable would like: from its module, its role or its input."""
        node = self.resolve(node)
        if node not in self._bases:
            self._bases[node] = identifier(self._base(node))
        return self._bases[node]

    def _base(self, node: fx.Node) -> str:
        if node in self.forced:
            return self.forced[node]
        if node in self.hints:
            return self.hints[node]
        if node.op == "placeholder":
            return node.name
        if node.op == "get_attr":
            return self.attr_base(str(node.target))
        owner = self.layers.calls.get(node) or self._norm_owner(node)
        if owner is not None:
            return _short(owner.rpartition(".")[2])
        summary = self.summaries.get(node)
        if isinstance(summary, str) and summary.isidentifier():
            return summary
        if node.target is operator.getitem and isinstance(node.args[1], int):
            return f"{self.base(node.args[0])}{node.args[1] + 1}"
        if node.target in SDPA or self._is_attention_dropout(node):
            return "y"
        first = self.resolve(node.args[0]) if node.args else None
        if isinstance(first, fx.Node) and _same_kind(summary, self.summaries.get(first)):
            return self.base(first)
        if node.target is getattr:
            return str(node.args[1])
        name = getattr(node.target, "__name__", str(node.target))
        return name.split(".")[0] if node.op == "call_function" else name

    def attr_base(self, target: str) -> str:
        """A tensor's leaf name; the masks' value (new blocks' mixing) is c."""
        leaf = target.rpartition(".")[2]
        return "c" if self.rename(target) != target and leaf == "value" else leaf

    def _norm_owner(self, node: fx.Node) -> str | None:
        """A masked norm's module (its weight's owner), when it is a declared layer."""
        if node.op != "call_function" or node.target not in MASKED_NORMS:
            return None
        weight = node.args[1]
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            owner = str(weight.target).rpartition(".")[0]
            return owner if owner in self.layers.decls else None
        return None

    def tensor(self, target: str) -> torch.Tensor:
        """The graph's tensor at `target`."""
        owner, _, leaf = target.rpartition(".")
        return getattr(self.gm.get_submodule(owner) if owner else self.gm, leaf)

    def attr_users(self, target: str) -> list[fx.Node]:
        """Users of every get_attr node that reads `target`."""
        return self._attr_users.get(target, [])


class Body:
    """One forward function: a region's statements, named and inlined, as source lines."""

    def __init__(self, src: Source, prefix: str, params: list[tuple[Key, str]],
                 items: list, indent: str) -> None:
        self.src, self.prefix, self.params, self.items, self.indent = (
            src, prefix, params, items, indent)
        self.members = {i for i in items if isinstance(i, fx.Node)}
        self.unpacked = {g for n in self.members for g in self._unpack(n) if g is not None}
        self.members |= self.unpacked
        self.result: fx.Node | None = None  # a block's output, returned at the end
        self.may_inline = not any(_mutates(n) for n in self.members)

    # --- the statements ---------------------------------------------------------------------

    def lines(self) -> list[str]:
        """The body's source lines (indented), shortened until they fit."""
        inline = {n for n in self.members if self._inlinable(n)}
        while True:
            names = self._allocate(inline)
            lines, long = [], []
            for stmt in self._statements(inline):
                text, too_long = self._render(stmt, names, inline)
                lines += text
                if too_long:
                    long.append(stmt)
            if self.result is not None:
                lines.append(f"{self.indent}return {names[self.src.resolve(self.result)]}")
            widest = [w for w in (self._widest(s, names, inline) for s in long) if w is not None]
            if not widest:
                return lines
            inline -= set(widest)

    def _statements(self, inline: set) -> list:
        return [i for i in self.items if not isinstance(i, fx.Node)
                or (i not in inline and i not in self.unpacked)]

    def _inlinable(self, node: fx.Node) -> bool:
        if not self.may_inline or node in self.unpacked or any(self._unpack(node)):
            return False
        if node.op not in ("call_function", "call_method") or _random(node):
            return False
        if node.target in SDPA:  # attention is a statement of its own, as people write it
            return False
        users = self.src.users_of(node)
        return len(users) == 1 and users[0] in self.members and users[0] not in self.unpacked

    def _unpack(self, node: fx.Node) -> list[fx.Node | None]:
        """A tuple's getitem users by index, where the statement unpacks it; else []."""
        summary = self.src.summaries.get(node)
        users = self.src.users_of(node)
        if not isinstance(summary, tuple) or (summary and summary[0] == "tensor") or not users:
            return []
        if not all(u in self.members and u.target is operator.getitem
                   and isinstance(u.args[1], int) and 0 <= u.args[1] < len(summary)
                   for u in users):
            return []
        slots: list[fx.Node | None] = [None] * len(summary)
        for u in users:
            if slots[u.args[1]] is not None:
                return []
            slots[u.args[1]] = u
        return slots

    # --- names ------------------------------------------------------------------------------

    def _allocate(self, inline: set) -> dict[Key, str]:
        """A name per value; a name is free again once its value's last use is written."""
        statements = self._statements(inline)
        position = {s: i for i, s in enumerate(statements) if isinstance(s, fx.Node)}
        calls = {i: s for i, s in enumerate(statements) if isinstance(s, BlockCall)}
        call_at = {n: i for i, c in calls.items() for n in c.members}
        end = len(statements)

        def host(node: fx.Node) -> int:
            while node in inline:
                node = self.src.users_of(node)[0]
            if node in self.unpacked:
                return position[self.src.resolve(node.args[0])]
            return position.get(node, call_at.get(node, end))

        params = {key for key, _ in self.params}

        def last(key: Key) -> int:
            """Where a value is last read; a parameter's readers elsewhere do not count."""
            uses = [host(u) if u in self.members or u in call_at else end
                    for u in self._key_users(key)
                    if key not in params or u in self.members or u in call_at]
            return max(uses, default=-1)

        names: dict[Key, str] = {}
        live: dict[str, int] = {}
        for key, name in self.params:
            names[key] = name
            live[name] = last(key)
        for i, stmt in enumerate(statements):
            loop = isinstance(stmt, BlockCall) and stmt.loop
            carried = names.get(stmt.inputs[0]) if loop and stmt.carried else None
            for name in [n for n, end_at in live.items()
                         if end_at < i or (end_at == i and (not loop or n == carried))]:
                del live[name]
            for key in self._defined(stmt):
                if last(key) >= 0:
                    names[key] = self._pick(key, live)
                    live[names[key]] = last(key)
            if loop:
                for name in [n for n, end_at in live.items() if end_at == i]:
                    del live[name]
        return names

    def _key_users(self, key: Key) -> list[fx.Node]:
        return self.src.attr_users(key) if isinstance(key, str) else self.src.users_of(key)

    def _defined(self, stmt) -> list[fx.Node]:
        if isinstance(stmt, BlockCall):
            return [stmt.output]
        slots = self._unpack(stmt)
        return [s for s in slots if s is not None] if slots else [stmt]

    def _pick(self, node: fx.Node, live: dict[str, int]) -> str:
        base = self.src.base(node)
        name, count = base, 0
        while name in live:
            count += 1
            name = f"{base}_{count}"
        return name

    # --- source -----------------------------------------------------------------------------

    def _render(self, stmt, names: dict, inline: set) -> tuple[list[str], bool]:
        """A statement's lines, and whether it is too long with its inlined parts."""
        if isinstance(stmt, BlockCall):
            return self._render_call(stmt, names), False
        expr = self.expr(stmt, names, inline)
        slots = self._unpack(stmt)
        if stmt.op == "output":
            target = "return "
        elif slots:
            target = ", ".join(names.get(s, "_") if s is not None else "_" for s in slots) + " = "
        else:
            target = f"{names[stmt]} = " if stmt in names else ""
        code = f"{self.indent}{target}{expr.text}"
        if len(code) > SOFT_LIMIT and any(self.src.resolve(n) in inline
                                          for n in stmt.all_input_nodes):
            return [code], True
        comment = shape_comment(self.src.summaries.get(self._shown(stmt)))
        if len(code) > HARD_LIMIT:
            return _wrapped(self.indent, target, expr), False
        if comment and len(code) + 2 + len(comment) <= HARD_LIMIT:
            code += f"  {comment}"
        return [code], False

    def _shown(self, stmt: fx.Node) -> fx.Node:
        """The node whose shape a statement's comment gives (a return: what it returns)."""
        returned = _single_output(self.src.gm, stmt.args[0]) if stmt.op == "output" else None
        if isinstance(returned, fx.Node):
            return self.src.resolve(returned)
        return stmt

    def _render_call(self, call: BlockCall, names: dict) -> list[str]:
        """`x = self.h[3](x, ...)`, or a loop over the blocks."""
        args = [self._value(k, names, set()).text for k in call.inputs]
        out = names.get(call.output)
        comment = f"  {c}" if (c := shape_comment(self.src.summaries.get(call.output))) else ""
        if not call.loop:
            head = access("self", f"{call.container}.{call.indices[0]}".split("."))
            target = f"{out} = " if out else ""
            return [f"{self.indent}{target}{head}({', '.join(args)}){comment}"]
        container = access("self", call.container.split("."))
        first, stop = call.indices[0], call.indices[-1] + 1
        span = "" if (first, stop) == (0, call.size) else f"[{first}:{stop}]"
        lines = [] if args[0] == out else [f"{self.indent}{out} = {args[0]}"]
        return lines + [f"{self.indent}for block in {container}{span}:",
                        f"{self.indent}    {out} = block({', '.join([out, *args[1:]])}){comment}"]

    def expr(self, node: fx.Node, names: dict, inline: set) -> Expr:
        """What `node` computes, its inlined inputs written in place."""
        src = self.src
        if node.op == "output":
            returned = _single_output(src.gm, node.args[0])
            return src.writer.arg_with(returned, lambda n: self._value(n, names, inline))
        owner = src.layers.calls.get(node)
        if owner is not None and self._owns(owner):
            x = node.args[1] if node.target is torch.ops.aten.embedding.default else node.args[0]
            head = access("self", self._relative(owner).split("."))
            inner = self._value(x, names, inline).text
            return Expr(f"{head}({inner})", PRIMARY, (head, (inner,)))
        return src.writer.node(src.gm, node, lambda n: self._value(n, names, inline))

    def _value(self, key: Key, names: dict, inline: set) -> Expr:
        node = self.src.resolve(key) if isinstance(key, fx.Node) else key
        if isinstance(node, fx.Node) and node.op == "get_attr":
            node = str(node.target)
        if node in names:
            return Expr(names[node])
        if isinstance(node, str):
            return Expr(access("self", self._relative(self.src.rename(node)).split(".")),
                        PRIMARY)
        if node in inline:
            return self.expr(node, names, inline)
        raise GraphError(f"emit: node {node.name} has no value where {self.prefix or 'the model'}"
                         " reads it")

    def _owns(self, path: str) -> bool:
        return not self.prefix or path.startswith(self.prefix + ".")

    def _relative(self, path: str) -> str:
        return path[len(self.prefix) + 1:] if self.prefix else path

    def _widest(self, stmt: fx.Node, names: dict, inline: set) -> fx.Node | None:
        """The inlined part of a statement to write on its own: the widest that fits a
        line, else the narrowest (the innermost part that is too long)."""
        parts, stack = [], list(stmt.all_input_nodes)
        while stack:
            node = self.src.resolve(stack.pop())
            if node in inline:
                parts.append(node)
                stack += node.all_input_nodes
        width = {n: len(self.expr(n, names, inline).text) for n in parts}
        room = SOFT_LIMIT - len(self.indent) - len(" = ") - 8  # 8: room for its name
        fitting = [n for n in parts if width[n] <= room]
        if fitting:
            return max(fitting, key=width.__getitem__)
        return min(parts, key=width.__getitem__, default=None)


def _single_output(gm: fx.GraphModule, returned):
    """A graph from torch.export returns a flat tuple that its GraphModule unflattens; a
    single output is returned as itself."""
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is not None and info.out_spec.is_leaf() and isinstance(returned, (tuple, list)):
        (returned,) = returned
    return returned


def _wrapped(indent: str, target: str, expr: Expr) -> list[str]:
    """A long call over several lines: its arguments on lines of their own."""
    if expr.call is None:
        return [f"{indent}{target}{expr.text}"]
    callee, args = expr.call
    lines, line = [f"{indent}{target}{callee}("], indent + "    "
    for arg in args:
        piece = f"{arg},"
        if line.strip() and len(line) + 1 + len(piece) > HARD_LIMIT:
            lines.append(line.rstrip())
            line = indent + "    "
        line += piece if not line.strip() else f" {piece}"
    return lines + [line.rstrip(), f"{indent})"]


def _short(name: str) -> str:
    """q_proj -> q, gate_proj -> gate (c_proj stays)."""
    stem = name.removesuffix("_proj")
    return stem if stem != name and (len(stem) > 1 or stem in "qkvo") else name


def _same_kind(a: Summary, b: Summary) -> bool:
    """Both tensors (or a tuple of tensors and a tensor) of one dtype."""
    def dtype(s: Summary):
        if isinstance(s, tuple) and len(s) == 3 and s[0] == "tensor":
            return s[2]
        if isinstance(s, tuple) and s and all(isinstance(t, tuple) for t in s):
            return dtype(s[0])
        return None
    return dtype(a) is not None and dtype(a) == dtype(b)


def _is_identity(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Dropout with p = 0: the same tensor in train and eval."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return isinstance(module, torch.nn.Dropout) and module.p == 0.0
    return False


def _random(node: fx.Node) -> bool:
    if node.op == "call_module" or node.target in RANDOM:
        return True
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and \
        torch.Tag.nondeterministic_seeded in target.tags


def _mutates(node: fx.Node) -> bool:
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.target is operator.setitem:
        return True
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable
