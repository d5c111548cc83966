"""The LM head and its cross-entropy in one op, a chunk of rows at a time.

``cross_entropy(hidden @ weight.T + bias, targets)`` makes the whole (N, V) logits tensor,
keeps an (N, V) gradient for backward, and runs three large matmuls that read or write it.
At gpt-tiny's (2048, 4096) that is 32 MiB apiece: on the CPU each step pays page faults for
fresh buffers that size and streams them through memory between the head's forward, the
loss and the head's backward. Here the forward takes `rows` rows at a time: their logits
(rows, V) in one reused buffer, the loss and the softmax gradient in place (msgc's
cross-entropy arithmetic), then at once the head's gradients, d hidden (rows, d) and the
rows' share of d weight (V, d) and d bias (V,), while the chunk is still in cache. Backward
only scales those kept gradients by the upstream one. Nothing (N, V) is ever made, so the
memory of the loss no longer grows with N x V either.

Without autograd (evaluation) only the loss is computed, chunk by chunk.
"""

from __future__ import annotations

import torch

from msgc.train.cross_entropy import loss_and_gradient, scaled_once, scored_count

__all__ = ["chunk_rows", "linear_cross_entropy"]

CHUNK_ELEMENTS = 1 << 21
"""Logits per chunk (8 MiB in fp32): small enough to stay in cache, large enough that the
chunk's matmuls run at full speed."""


def chunk_rows(vocab: int) -> int:
    """Rows of logits computed at once for a `vocab`-sized head."""
    return max(1, CHUNK_ELEMENTS // vocab)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, ignore_index: int = -100,
                         reduction: str = "mean", rows: int | None = None) -> torch.Tensor:
    """``cross_entropy(F.linear(hidden, weight, bias), targets)`` without the (N, V) logits.

    `hidden` is (N, d), `weight` (V, d), `bias` (V,) or None, `targets` (N,); targets equal
    to `ignore_index` are not scored; ``reduction`` is ``"mean"`` over the scored targets or
    ``"sum"``. Under autocast the head runs in the autocast dtype, as ``F.linear`` would; the
    loss is fp32. `rows` sets the chunk (default: ``chunk_rows(V)``).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1] \
            or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected (N, d) hidden, (V, d) weight and (N,) targets, got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)} and "
                         f"{tuple(targets.shape)}")
    hidden, weight, bias = _autocast(hidden, weight, bias)
    divisor = scored_count(targets, ignore_index) if reduction == "mean" else 1
    rows = rows or chunk_rows(weight.shape[0])
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index, divisor,
                                         rows)
    with torch.no_grad():
        return _chunked(hidden, weight, bias, targets, ignore_index, divisor, rows,
                        with_gradient=False)[0]


class _LinearCrossEntropy(torch.autograd.Function):
    """The loss forward, the head's gradients kept for backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, divisor, rows):
        loss, *gradients = _chunked(hidden, weight, bias, targets, ignore_index, divisor, rows,
                                    with_gradient=True)
        ctx.save_for_backward(*(g for g in gradients if g is not None))
        ctx.has_bias = bias is not None
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        gradients = scaled_once(ctx, grad_loss, "linear_cross_entropy")
        grad_hidden, grad_weight, *grad_bias = gradients
        return (grad_hidden, grad_weight, grad_bias[0] if ctx.has_bias else None,
                None, None, None, None)


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             targets: torch.Tensor, ignore_index: int, divisor: torch.Tensor | int, rows: int,
             with_gradient: bool):
    """(loss, d hidden (N, d), d weight (V, d), d bias (V,) or None), the gradients None
    without `with_gradient`; `rows` rows of logits at a time."""
    n, vocab = hidden.shape[0], weight.shape[0]
    fp32 = hidden.dtype == torch.float32
    buffer = hidden.new_empty(min(rows, n), vocab)                 # (rows, V) chunk logits
    weight_t = weight.t().contiguous()                             # (d, V): a faster matmul
    loss = hidden.new_zeros((), dtype=torch.float32)
    grad_hidden = torch.empty_like(hidden) if with_gradient else None         # (N, d)
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if with_gradient else None
    grad_bias = (torch.zeros_like(bias, dtype=torch.float32)
                 if with_gradient and bias is not None else None)
    for start in range(0, n, rows):
        h = hidden[start:start + rows]                             # (r, d)
        logits = buffer[:h.shape[0]]                               # (r, V)
        if bias is None:
            torch.mm(h, weight_t, out=logits)
        else:
            torch.addmm(bias, h, weight_t, out=logits)
        part, gradient = loss_and_gradient(logits, targets[start:start + rows], ignore_index,
                                           divisor, with_gradient, overwrite=fp32)
        loss += part
        if not with_gradient:
            continue
        gradient = gradient.to(hidden.dtype)                       # (r, V) d loss / d logits
        torch.mm(gradient, weight, out=grad_hidden[start:start + rows])
        if fp32:
            grad_weight.addmm_(gradient.t(), h)                    # (V, d) += (V, r) @ (r, d)
        else:  # the product in the head's dtype, accumulated in fp32
            grad_weight += gradient.t() @ h
        if grad_bias is not None:
            grad_bias += gradient.sum(0)
    if not with_gradient:
        return loss, None, None, None
    dtype = hidden.dtype  # .to() returns the fp32 accumulators themselves when it is fp32
    return (loss, grad_hidden, grad_weight.to(dtype),
            None if grad_bias is None else grad_bias.to(dtype))


def _autocast(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """The head's inputs in the autocast dtype where autocast is on, as ``F.linear`` casts
    them; otherwise as given (they must then share a dtype)."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = hidden.dtype
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
