"""What a model family trains on: its batches, its loss and its evaluation.

Causal LM (gpt2, llama)
    ``model(x)`` gives logits (B, T, V); the loss is the cross-entropy against the next tokens
    ``y``. Evaluation scores every target of a split exactly once (``data.eval_batches``).

Masked LM (bert)
    Training batches are BERT-masked (15%, 80/10/10) by ``BatchSampler.mlm``; the loss is the
    cross-entropy at the predicted positions (labels -100 are ignored). A model with a
    masked head (the bert family: ``masked_head=True``) is called as ``model(inputs,
    token_types, predict)`` with ``predict`` the bool (B, T) mask of those positions and runs
    its head there alone, returning (N, V) logits; others return (B, T, V). Evaluation masks the
    same windows with a generator seeded by the batch's index alone, so every run (any seed)
    sees the same masks, and scores each token at most once (positions a flush-end window
    shares with the window before it are not predicted).

Bits per byte
    ``evaluate`` sums the NLL in nats over the scored tokens and divides by ln 2 times their
    UTF-8 bytes (``bits_per_byte``). For a causal LM over a whole split the bytes are
    ``TokenData.scored_bytes``; for MLM they are the bytes of the masked tokens, so the figure
    is the MLM loss per byte of predicted text.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from msgc.train.cross_entropy import cross_entropy
from msgc.train.data import (
    IGNORE_INDEX,
    BatchSampler,
    TokenData,
    bits_per_byte,
    eval_batches,
    mlm_batch,
)
from msgc.train.linear_cross_entropy import linear_cross_entropy
from msgc.train.lm_head import HeadInputs
from msgc.train.tokenizer import Tokenizer

__all__ = ["Evaluation", "Task"]

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), int64 (B, T); targets -100: skip


@dataclass(frozen=True)
class Evaluation:
    """Mean loss (nats per scored token) and bits per byte over the scored text."""

    loss: float
    bpb: float


class Task:
    """Batches, loss and evaluation for a causal (``mlm=False``) or masked (``mlm=True``) LM."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        data: TokenData,
        batch_size: int,
        seq_len: int,
        seed: int,
        mlm: bool,
        masked_head: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad_eval: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.pad_eval = pad_eval  # models with a fixed batch size (exported Hugging Face ones)
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.mlm = mlm
        self.masked_head = masked_head  # the model scores the predicted positions alone
        self.sampler = BatchSampler(data.train, batch_size, seq_len, seed, rank, world_size)
        self.global_sampler = BatchSampler(data.train, batch_size, seq_len, seed)
        self.token_bytes = torch.tensor(  # (V,) UTF-8 bytes per id
            [len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)],
            dtype=torch.int64,
        )

    def train_batch(self, index: int) -> Batch:
        """This rank's rows of training micro-batch number `index` (a pure function of the
        index and the seed; with one process, the whole batch)."""
        return self._batch(self.sampler, index)

    def example_batch(self, index: int, rows: int = 2) -> Batch:
        """The first `rows` rows of the global micro-batch `index`: the same on every rank."""
        inputs, targets = self._batch(self.global_sampler, index)
        return inputs[:rows], targets[:rows]

    def _batch(self, sampler: BatchSampler, index: int) -> Batch:
        if self.mlm:
            return sampler.mlm(index, self.tokenizer.mask_id, self.tokenizer.vocab_size)
        return sampler.batch(index)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy over the scored targets, their mean (or ``reduction="sum"``: their
        sum), a 0-d tensor. A model split before its head (``msgc.train.lm_head``) runs the
        head and the loss as one op (``linear_cross_entropy``)."""
        outputs, scored = self._outputs(model, inputs, targets)  # (M, V) or HeadInputs, (M,)
        if isinstance(outputs, HeadInputs):
            return linear_cross_entropy(*outputs, scored, IGNORE_INDEX, reduction)
        return cross_entropy(outputs, scored, IGNORE_INDEX, reduction)

    def model_inputs(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor,
                                                                                 ...]:
        """The model's arguments for a batch: ``(inputs,)``, or with a masked head ``(inputs,
        token_types, predict)``, token types all 0 and ``predict`` the scored positions."""
        if not self.masked_head:
            return (inputs,)
        return inputs, torch.zeros_like(inputs), targets != IGNORE_INDEX

    def _outputs(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor | HeadInputs, torch.Tensor]:
        """The model's outputs and targets row by row: logits (B*T, V) and targets (B*T,),
        or with a masked head (N, V) and (N,) at the N scored positions; a split model's
        `HeadInputs` likewise, their hidden states (B*T, d) or (N, d)."""
        args = self.model_inputs(inputs, targets)
        outputs = model(*args)  # (B, T, V), or (N, V) with a masked head
        scored = targets[args[-1]] if self.masked_head else targets.flatten()
        if isinstance(outputs, HeadInputs):
            hidden = outputs.hidden if self.masked_head else outputs.hidden.flatten(0, 1)
            return outputs._replace(hidden=hidden), scored
        return (outputs if self.masked_head else outputs.flatten(0, 1)), scored

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        split: str,
        max_batches: int | None = None,
        device: torch.device | str = "cpu",
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> Evaluation:
        """Loss and bits per byte on `split` (every batch, or `max_batches` spread evenly)."""
        was_training = model.training
        model.eval()
        nll, count, nbytes = 0.0, 0, 0
        for inputs, targets in self._eval_batches(split, max_batches):
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast():
                nll += float(self.loss(model, inputs, targets, reduction="sum"))
            scored = targets[targets != IGNORE_INDEX].cpu()
            count += scored.numel()
            nbytes += int(self.token_bytes[scored].sum())
        model.train(was_training)
        return Evaluation(loss=nll / max(count, 1), bpb=bits_per_byte(nll, max(nbytes, 1)))

    def _eval_batches(self, split: str, max_batches: int | None) -> Iterator[Batch]:
        """The split's evaluation batches (as `Batch`es for this task), maybe a strided subset."""
        tokens = self.data.split(split)
        batches = eval_batches(tokens, self.batch_size, self.seq_len)
        if max_batches is not None:
            windows = max(1, math.ceil((len(tokens) - 1) / self.seq_len))
            total = math.ceil(windows / self.batch_size)
            batches = itertools.islice(batches, 0, None, max(1, total // max_batches))
            batches = itertools.islice(batches, max_batches)
        for index, (x, y) in enumerate(batches):
            x, y = self._masked(x, y, index) if self.mlm else (x, y)
            yield self._padded(x, y) if self.pad_eval else (x, y)

    def _padded(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """A short last batch filled up to `batch_size` rows whose targets are not scored."""
        missing = self.batch_size - x.size(0)
        if missing <= 0:
            return x, y
        fill_x = x[:1].expand(missing, -1)  # (missing, T)
        fill_y = torch.full((missing, y.size(1)), IGNORE_INDEX, dtype=y.dtype)
        return torch.cat([x, fill_x]), torch.cat([y, fill_y])

    def _masked(self, x: torch.Tensor, y: torch.Tensor, index: int) -> Batch:
        """BERT-masked evaluation windows, the same for every run (seeded by `index`)."""
        generator = torch.Generator().manual_seed(index)
        inputs, labels = mlm_batch(x, self.tokenizer.mask_id, self.tokenizer.vocab_size,
                                   generator)
        # y's skipped positions mark the x positions the previous window already covered
        labels[y == IGNORE_INDEX] = IGNORE_INDEX
        return inputs, labels
