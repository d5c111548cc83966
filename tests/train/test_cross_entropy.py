"""Tests for msgc.train.cross_entropy: loss and gradient against F.cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msgc.train.cross_entropy import cross_entropy

IGNORE = -100


def case(rows: int = 37, vocab: int = 53, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Logits (rows, vocab) with a wide range, and targets with some rows ignored."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=generator) * 6).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[::5] = IGNORE
    return logits, targets


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_and_gradient_match_torch(reduction):
    logits, targets = case()
    ours_in = logits.clone().requires_grad_()
    torch_in = logits.clone().requires_grad_()
    ours = cross_entropy(ours_in, targets, IGNORE, reduction)
    expected = F.cross_entropy(torch_in, targets, ignore_index=IGNORE, reduction=reduction)
    (ours * 3.0).backward()  # a non-unit upstream gradient is applied
    (expected * 3.0).backward()
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_in.grad, torch_in.grad, rtol=1e-5, atol=1e-7)
    assert ours_in.grad[::5].abs().max() == 0  # ignored rows get no gradient


def test_without_autograd_only_the_loss_is_computed():
    logits, targets = case()
    with torch.no_grad():
        loss = cross_entropy(logits.requires_grad_(), targets, reduction="sum")
    assert not loss.requires_grad
    expected = F.cross_entropy(logits.detach(), targets, ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_bf16_logits_get_a_bf16_gradient_from_an_fp32_loss():
    logits, targets = case(dtype=torch.bfloat16)
    logits.requires_grad_()
    loss = cross_entropy(logits, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    expected = F.cross_entropy(logits.detach().float(), targets, ignore_index=IGNORE)
    torch.testing.assert_close(loss, expected)


def test_mean_over_no_scored_target_is_nan_as_in_torch():
    logits, targets = case(rows=4)
    targets[:] = IGNORE
    assert math.isnan(float(cross_entropy(logits, targets)))
    assert float(cross_entropy(logits, targets, reduction="sum")) == 0.0


@pytest.mark.parametrize("bad", [dict(reduction="none"), dict(shape=(2, 3, 5))])
def test_bad_arguments_name_what_is_wrong(bad):
    logits, targets = case(rows=2, vocab=5)
    if "shape" in bad:
        logits = torch.zeros(bad["shape"])
    with pytest.raises(ValueError, match="reduction|expected"):
        cross_entropy(logits, targets, reduction=bad.get("reduction", "mean"))


def test_a_second_backward_through_the_same_loss_is_refused():
    logits, targets = case()
    loss = cross_entropy(logits.requires_grad_(), targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()
