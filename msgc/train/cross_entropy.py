"""Cross-entropy whose forward also makes the gradient: one exp pass over the logits.

``F.cross_entropy`` on (N, V) logits runs ``log_softmax`` (an exp pass) forward; backward
fills a zero (N, V) gradient for the NLL, scatters into it and runs ``log_softmax``'s
backward (a second exp pass). Here the forward computes the log-sum-exp and the softmax in
one exp pass, out of plain elementwise ops, and keeps ``(softmax - one_hot) * weight`` as the
gradient; backward only scales it, in place (so it runs once per forward). Same memory:
one (N, V) fp32 buffer kept for backward, as torch keeps the log-probabilities. On the CPU
at (2048, 4096) it takes about a third of ``F.cross_entropy``'s forward + backward time,
which matters for growth: the vocabulary's share of a step is largest in the small
starting models.

Without autograd (evaluation, ``torch.no_grad``) only the loss is computed.
"""

from __future__ import annotations

import torch

__all__ = ["cross_entropy"]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (N, V) `logits` against (N,) class `targets`, as ``F.cross_entropy``.

    Targets equal to `ignore_index` are not scored; ``reduction`` is ``"mean"`` over the
    scored targets (NaN when there are none, as torch) or ``"sum"``. Computed in fp32
    whatever the logits' dtype; the gradient comes back in the logits' dtype.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected (N, V) logits and (N,) targets, got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    divisor = scored_count(targets, ignore_index) if reduction == "mean" else 1
    if torch.is_grad_enabled() and logits.requires_grad:
        return _CrossEntropy.apply(logits, targets, ignore_index, divisor)
    return loss_and_gradient(logits, targets, ignore_index, divisor, with_gradient=False)[0]


def scored_count(targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """How many targets are scored (not `ignore_index`): the divisor of a mean loss."""
    return (targets != ignore_index).sum()


class _CrossEntropy(torch.autograd.Function):
    """The loss forward, its gradient kept for backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                divisor: torch.Tensor | int) -> torch.Tensor:
        loss, gradient = loss_and_gradient(logits, targets, ignore_index, divisor,
                                           with_gradient=True)
        ctx.save_for_backward(gradient)
        ctx.logits_dtype = logits.dtype
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (gradient,) = scaled_once(ctx, grad_loss, "cross_entropy")  # (N, V) d loss / d logits
        return gradient.to(ctx.logits_dtype), None, None, None


def scaled_once(ctx, grad_loss: torch.Tensor, op: str) -> tuple[torch.Tensor, ...]:
    """The gradients a loss's forward kept (``ctx.saved_tensors``), scaled by the upstream
    `grad_loss` in place: a fresh (N, V) buffer costs page faults on the CPU. So backward
    may run only once per forward (``ctx.used``)."""
    if ctx.used:
        raise RuntimeError(f"msgc's {op} scales its kept gradients in place, so its backward "
                           "runs once: compute the loss again instead of retain_graph=True")
    ctx.used = True
    gradients = ctx.saved_tensors
    for gradient in gradients:
        gradient.mul_(grad_loss)
    return gradients


def loss_and_gradient(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                      divisor: torch.Tensor | int, with_gradient: bool, overwrite: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loss summed over the scored targets and divided by `divisor` (0-d, fp32) and, if
    asked, its (N, V) fp32 gradient w.r.t. `logits`. With `overwrite` an fp32 `logits` buffer
    becomes the gradient (no new (N, V) buffer)."""
    logits = logits.float()                                        # (N, V)
    scored = targets != ignore_index                               # (N,)
    picked = torch.where(scored, targets, 0).unsqueeze(1)          # (N, 1) ignored rows: 0
    row_max = logits.amax(dim=1, keepdim=True)                     # (N, 1)
    picked_logit = logits.gather(1, picked)                        # (N, 1)
    shifted = logits.sub_(row_max) if overwrite else torch.sub(logits, row_max)
    exp = shifted.exp_()                                           # (N, V)
    sum_exp = exp.sum(dim=1, keepdim=True)                         # (N, 1)
    nll = (row_max + sum_exp.log() - picked_logit).squeeze(1)      # (N,)
    loss = torch.where(scored, nll, 0.0).sum() / divisor
    weight = scored.float() / divisor                              # (N,) d loss / d nll
    if not with_gradient:
        return loss, None
    gradient = exp.mul_(weight.unsqueeze(1) / sum_exp)             # (N, V) weighted softmax
    gradient.scatter_add_(1, picked, -weight.unsqueeze(1))         # minus the one-hot
    return loss, gradient
