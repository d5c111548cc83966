"""Tests for msgc.train.linear_cross_entropy: the chunked head + loss against a float64
F.linear + F.cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msgc.train.linear_cross_entropy import chunk_rows, linear_cross_entropy

IGNORE = -100


def case(rows: int = 37, dim: int = 12, vocab: int = 53, bias: bool = True, seed: int = 0):
    """hidden (rows, dim), weight (vocab, dim), bias (vocab,) or None, targets with some
    rows ignored; logits over a wide range."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=generator) * 2
    weight = torch.randn(vocab, dim, generator=generator)
    bias_ = torch.randn(vocab, generator=generator) if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[::5] = IGNORE
    return hidden, weight, bias_, targets


def reference(hidden, weight, bias, targets, reduction):
    """The loss and its gradients (hidden, weight, bias) in float64, through torch."""
    leaves = [t.double().requires_grad_() for t in (hidden, weight, bias) if t is not None]
    h, w, *b = leaves
    logits = F.linear(h, w, b[0] if b else None)
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction=reduction)
    return loss, torch.autograd.grad(loss * 3.0, leaves)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [7, 37, 64])  # chunks that do not divide N, one, one short
def test_loss_and_gradients_match_torch_in_float64(reduction, bias, rows):
    hidden, weight, bias_, targets = case(bias=bias)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias_) if t is not None]
    h, w, *b = leaves
    ours = linear_cross_entropy(h, w, b[0] if b else None, targets, IGNORE, reduction,
                                rows=rows)
    grads = torch.autograd.grad(ours * 3.0, leaves)  # a non-unit upstream gradient
    expected, expected_grads = reference(hidden, weight, bias_, targets, reduction)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    assert grads[0][::5].abs().max() == 0  # ignored rows get no gradient


def test_without_autograd_only_the_loss_is_computed():
    hidden, weight, bias, targets = case()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight.requires_grad_(), bias, targets,
                                    reduction="sum", rows=10)
    assert not loss.requires_grad
    expected, _ = reference(hidden, weight.detach(), bias, targets, "sum")
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)


def test_gradient_reaches_a_weight_used_elsewhere_too():
    """A tied head (the embedding's weight) sums both paths' gradients, as F.linear does."""
    hidden, weight, _, targets = case(bias=False)
    ours_w, torch_w = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    ids = torch.arange(hidden.shape[0]) % weight.shape[0]
    for w, loss_fn in ((ours_w, lambda h, w: linear_cross_entropy(h, w, None, targets)),
                       (torch_w, lambda h, w: F.cross_entropy(
                           F.linear(h, w), targets, ignore_index=IGNORE))):
        embedded = hidden + F.embedding(ids, w)  # (N, dim)
        loss_fn(embedded, w).backward()
    torch.testing.assert_close(ours_w.grad, torch_w.grad, rtol=1e-4, atol=1e-6)


def test_autocast_runs_the_head_in_bf16_and_returns_fp32_gradients():
    hidden, weight, bias, targets = case()
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(*leaves, targets)
    loss.backward()
    assert loss.dtype == torch.float32
    assert all(t.grad.dtype == torch.float32 for t in leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight, bias)  # what the autocast head computes: bf16
    expected = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)


def test_mean_over_no_scored_target_is_nan_as_in_torch():
    hidden, weight, bias, targets = case(rows=4)
    targets[:] = IGNORE
    loss = linear_cross_entropy(hidden, weight, bias, targets)
    assert math.isnan(float(loss))


def test_backward_runs_once():
    hidden, weight, bias, targets = case()
    loss = linear_cross_entropy(hidden.requires_grad_(), weight, bias, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        loss.backward()


def test_bad_shapes_and_reductions_are_refused():
    hidden, weight, bias, targets = case()
    with pytest.raises(ValueError, match=r"\(N, d\) hidden, \(V, d\) weight"):
        linear_cross_entropy(hidden[:, :5], weight, bias, targets)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, bias, targets, reduction="none")


def test_chunks_hold_about_two_million_logits():
    assert chunk_rows(4096) == 512
    assert chunk_rows(50257) == 41
    assert chunk_rows(10**8) == 1
