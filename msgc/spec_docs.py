"""The spec format's reference page, generated from the pydantic models in msgc.spec.

    python -m msgc.spec_docs > docs/spec.md

regenerates docs/spec.md; tests/test_docs.py fails when the page and the models disagree.
"""

from __future__ import annotations

import inspect
import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from msgc.spec import Spec

HEADER = """\
# Spec reference

<!-- Generated from msgc/spec.py by `python -m msgc.spec_docs > docs/spec.md`; do not edit. -->

Every key a spec file may hold, section by section, with its type, its default and what it
does. Unknown keys are errors, and types are strict (`"3"` is not an integer). How to write
a spec, with examples and the rules that tie sections together:
[Writing a spec](spec-guide.md). `msgc schema` prints the same format as JSON Schema.
"""

TYPE_NAMES: dict[Any, str] = {int: "integer", float: "number", str: "string",
                              bool: "true or false", Any: "any value"}
CONSTRAINTS: dict[type, tuple[str, str]] = {
    annotated_types.Gt: ("gt", ">"), annotated_types.Ge: ("ge", ">="),
    annotated_types.Lt: ("lt", "<"), annotated_types.Le: ("le", "<="),
    annotated_types.MinLen: ("min_length", "of length >="),
}
"""Constraint types rendered in the type column: their attribute and symbol."""


def spec_reference_markdown() -> str:
    """The reference page of the spec format: one table per section, as markdown."""
    sections = [_section(model, where) for model, where in _models(Spec, "").items()]
    return "\n".join([HEADER, *sections])


def _models(model: type[BaseModel], where: str) -> dict[type[BaseModel], str]:
    """`model` and every model nested in its fields, depth first, each with its key path."""
    found = {model: where}
    for name, field in model.model_fields.items():
        path = f"{where}.{name}" if where else name
        for nested, suffix in _nested_models(field.annotation):
            found |= {key: value for key, value in _models(nested, path + suffix).items()
                      if key not in found}
    return found


def _nested_models(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """The models an annotation holds, each with the suffix of its path (``[]``: items)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _nested_models(args[0])
    if origin is list:
        return [(model, "[]" + suffix) for model, suffix in _nested_models(args[0])]
    if origin in (Union, types.UnionType):
        return [found for arg in args for found in _nested_models(arg)]
    return []


def _section(model: type[BaseModel], where: str) -> str:
    """One model's heading, docstring and table of keys."""
    place = f"At `{where}`." if where else "The top level of a spec file."
    rows = [_row(name, field) for name, field in model.model_fields.items()]
    return "\n".join([
        f"## {model.__name__}", "", place, "", inspect.cleandoc(model.__doc__ or ""), "",
        "| key | type | default | description |", "|---|---|---|---|", *rows, "",
    ])


def _row(name: str, field: FieldInfo) -> str:
    """One table row: the key, its type, its default and its description."""
    cells = [f"`{name}`", _type_text(field.annotation, field.metadata), _default_text(field),
             field.description or ""]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _type_text(annotation: Any, metadata: list[Any]) -> str:
    """A reader's name for a type, with its constraints (``integer > 0``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_text(args[0], [*metadata, *args[1:]])
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(arg, metadata) for arg in args if arg is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in args)
    if origin is list:
        return "list of " + _type_text(args[0], [])
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return " ".join([TYPE_NAMES[annotation], *_constraint_texts(metadata)])


def _constraint_texts(metadata: list[Any]) -> list[str]:
    """``> 0``-style texts of the bounds in a field's metadata, in order."""
    texts = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            texts += _constraint_texts(item.metadata)
        elif type(item) in CONSTRAINTS:
            attribute, symbol = CONSTRAINTS[type(item)]
            texts.append(f"{symbol} {getattr(item, attribute)}")
    return [", ".join(texts)] if texts else []


def _default_text(field: FieldInfo) -> str:
    """``required``, ``unset`` (None), the defaults of a nested model, or the JSON value."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{json.dumps(value)}`"


def main() -> None:
    """Print the reference page (redirect it into docs/spec.md)."""
    print(spec_reference_markdown(), end="")


if __name__ == "__main__":
    main()
