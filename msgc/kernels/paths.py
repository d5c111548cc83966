"""Which code path each fused masked-kernel call ran, for tests and benchmarks to observe.

    with kernel_paths() as paths:
        masked_linear_triton(x, w, b, m, "gelu")
    paths  # [("masked_linear", "triton")]

The custom ops ``msgc::masked_linear``, ``msgc::masked_swiglu`` and ``msgc::masked_norm``
(and their ``*_backward`` ops, recorded as ``"<op>_backward"``) record ``"triton"`` when
their Triton kernels ran and ``"torch"`` when they computed with torch instead (no runnable
Triton, inputs the kernels do not take, or a part with no kernel, such as the backward of a
linear without activation). The reference and fold implementations are plain torch and
record nothing. Outside a ``kernel_paths()`` block nothing is recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_open: list[list[tuple[str, str]]] = []


@contextlib.contextmanager
def kernel_paths() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(op, path)`` for every fused-op call made inside the block, in order."""
    paths: list[tuple[str, str]] = []
    _open.append(paths)
    try:
        yield paths
    finally:
        _open.remove(paths)


def record(op: str, path: str) -> None:
    """Note that `op` ran `path` ("triton" or "torch") in every open ``kernel_paths()``."""
    for paths in _open:
        paths.append((op, path))
