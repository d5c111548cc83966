"""Token arrays, training batches and evaluation windows.

Token data
    ``load_token_data(corpus, tokenizer, cache_dir)`` encodes each split once into
    ``<cache_dir>/tokens/<tokenizer fingerprint>-<split fingerprint>.npy`` (uint16 when
    ``vocab_size <= 65536``, else uint32) and memory-maps it (``np.load(mmap_mode="r")``).
    ``prepare_data(data, tokenizer, vocab_size, cache_dir)`` does corpus + tokenizer + tokens.

Training batches (``BatchSampler``)
    Batch ``step`` is a pure function of ``(seed, step)``: a ``numpy`` Generator seeded with
    ``[seed, step]`` draws ``batch_size`` window offsets uniformly in ``[0, N - seq_len)``; row
    ``i`` is ``x = tokens[o_i : o_i + T]``, ``y = tokens[o_i + 1 : o_i + T + 1]``. A resumed run
    only needs its step number. ``batch_size`` is the *global* batch: with ``world_size`` ranks,
    rank ``r`` takes the contiguous rows ``[r * b, (r + 1) * b)`` with
    ``b = batch_size // world_size``, so concatenating the ranks' batches in rank order gives
    the single-process batch exactly. ``mlm(step, ...)`` masks the global batch with a generator
    seeded ``[seed, step, 1]`` and slices it the same way, so masks are shard-invariant too.

MLM (``mlm_batch``)
    Each position is predicted with probability ``prob``; a predicted position becomes
    ``[MASK]`` with probability 0.8, a uniformly random id in ``[0, vocab_size)`` with 0.1, and
    stays unchanged with 0.1. ``labels`` holds the original id where predicted and -100
    elsewhere. If no position at all is drawn, position (0, 0) is predicted (so the loss is
    never an empty mean).

Evaluation (``eval_batches``, ``bits_per_byte``)
    A split of ``N`` tokens has ``N - 1`` targets (``tokens[1:]``; the first token has no
    context and is never scored). Windows start at ``0, T, 2T, ...``; each full window scores
    its ``T`` targets. If ``(N - 1) % T = r > 0`` one last window is taken flush with the end
    (``x = tokens[N-1-T : N-1]``), so it keeps a full context, and only its last ``r`` targets
    are scored: the others are set to -100 in ``y`` (they were scored by the previous window).
    Every target is scored exactly once; sum the NLL with ``ignore_index=-100``. (A split shorter
    than ``T + 1`` tokens yields a single short window.) ``TokenData.scored_bytes[split]`` is the
    UTF-8 byte count of exactly the scored tokens: the split's bytes minus those of its first
    token. ``bits_per_byte(total_nll, data.scored_bytes[split])`` is then tokenizer-independent.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from msgc.errors import DataError
from msgc.train.corpus import SPLITS, corpus_fingerprint, load_corpus
from msgc.train.tokenizer import Tokenizer, default_cache_dir, get_tokenizer, line_chunks

IGNORE_INDEX = -100
MLM_PROB = 0.15  # the share of positions an MLM batch predicts


# ---------------------------------------------------------------------------------------------
# Token data


@dataclass
class TokenData:
    """The three splits as 1-D integer arrays (memory-mapped) and their UTF-8 byte counts."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    bytes: dict[str, int]  # UTF-8 bytes of each split's text
    scored_bytes: dict[str, int]  # bytes of the tokens eval_batches scores (all but the first)
    vocab_size: int

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise KeyError(f"split must be one of {SPLITS}, not {name!r}")
        return getattr(self, name)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    batch = getattr(tokenizer, "encode_batch", None)
    if batch is None:
        return tokenizer.encode(text)
    return [i for piece in batch(list(line_chunks(text))) for i in piece]


def encode_split(
    tokenizer: Tokenizer, text: str, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """The ids of ``text``, cached as ``.npy`` under ``cache_dir/tokens`` and memory-mapped."""
    tag = hashlib.sha256(
        f"{tokenizer.fingerprint}|{tokenizer.vocab_size}|{corpus_fingerprint(text)}".encode()
    ).hexdigest()[:32]
    path = Path(cache_dir or default_cache_dir()) / "tokens" / f"{tag}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # a corrupt cache entry: re-encode over it
            pass
    dtype = token_dtype(tokenizer.vocab_size)
    ids = np.asarray(_encode(tokenizer, text), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise DataError(
            f"the tokenizer emitted id {int(ids.max())} outside the model's vocab_size "
            f"{tokenizer.vocab_size}: delete the cache in {path.parent.parent}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, ids.astype(dtype))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return np.load(path, mmap_mode="r")


def load_token_data(
    corpus: dict[str, str], tokenizer: Tokenizer, cache_dir: str | os.PathLike | None = None
) -> TokenData:
    """Encode (or load from the cache) every split of ``corpus`` with ``tokenizer``."""
    arrays = {s: encode_split(tokenizer, corpus[s], cache_dir) for s in SPLITS}
    nbytes = {s: len(corpus[s].encode("utf-8")) for s in SPLITS}
    scored = {
        s: nbytes[s] - (len(tokenizer.token_bytes(int(a[0]))) if len(a) else 0)
        for s, a in arrays.items()
    }
    return TokenData(**arrays, bytes=nbytes, scored_bytes=scored, vocab_size=tokenizer.vocab_size)


def prepare_data(
    data: str = "shakespeare",
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Tokenizer, TokenData]:
    """Corpus ``data`` -> tokenizer ``tokenizer`` at ``vocab_size`` -> cached token arrays."""
    corpus = load_corpus(data)
    tok = get_tokenizer(tokenizer, vocab_size, corpus["train"], cache_dir)
    return tok, load_token_data(corpus, tok, cache_dir)


# ---------------------------------------------------------------------------------------------
# Training batches


def _windows(tokens: np.ndarray, offsets: np.ndarray, length: int) -> torch.Tensor:
    idx = offsets[:, None] + np.arange(length, dtype=np.int64)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


class BatchSampler:
    """Deterministic, resumable, shardable random windows of ``tokens`` (see module doc)."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be >= 1, not {batch_size}, {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size % world_size:
            raise DataError(
                f"the global batch_size {batch_size} does not divide over {world_size} "
                "processes: make it a multiple of the number of processes"
            )
        if len(tokens) < seq_len + 1:
            raise DataError(
                f"the split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                "lower the model's seq_len or give more text"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = batch_size // world_size
        self._rows = slice(rank * self.local_batch_size, (rank + 1) * self.local_batch_size)

    def offsets(self, step: int) -> np.ndarray:
        """The global batch's window offsets at ``step`` (all ranks)."""
        rng = np.random.default_rng([self.seed, int(step)])
        high = len(self.tokens) - self.seq_len  # o + T + 1 <= N
        return rng.integers(0, high, size=self.batch_size, dtype=np.int64)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's causal-LM batch ``(x, y)``, int64 of shape (local_batch, seq_len)."""
        w = _windows(self.tokens, self.offsets(step)[self._rows], self.seq_len + 1)
        return w[:, :-1], w[:, 1:]

    def mlm(
        self, step: int, mask_id: int, vocab_size: int, prob: float = MLM_PROB
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's MLM batch ``(inputs, labels)`` at ``step`` (shard-invariant masks)."""
        w = _windows(self.tokens, self.offsets(step), self.seq_len)
        gen = torch.Generator().manual_seed(_mix(self.seed, step, 1))
        inputs, labels = mlm_batch(w, mask_id, vocab_size, gen, prob)
        return inputs[self._rows], labels[self._rows]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(step)


def _mix(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    ss = np.random.SeedSequence([int(p) for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def mlm_batch(
    x: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator | np.random.Generator,
    prob: float = MLM_PROB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ``x`` (see module doc); deterministic given the generator's state."""
    shape = tuple(x.shape)
    if isinstance(generator, np.random.Generator):
        u_sel = torch.from_numpy(generator.random(shape))
        u_kind = torch.from_numpy(generator.random(shape))
        rand = torch.from_numpy(generator.integers(0, vocab_size, size=shape, dtype=np.int64))
    else:
        u_sel = torch.rand(shape, generator=generator, dtype=torch.float64)
        u_kind = torch.rand(shape, generator=generator, dtype=torch.float64)
        rand = torch.randint(0, vocab_size, shape, generator=generator, dtype=torch.int64)
    x = x.to(torch.int64)
    sel = u_sel < prob
    if not bool(sel.any()) and x.numel():
        sel.view(-1)[0] = True
    labels = torch.where(sel, x, torch.full_like(x, IGNORE_INDEX))
    inputs = torch.where(sel & (u_kind < 0.8), torch.full_like(x, mask_id), x)
    inputs = torch.where(sel & (u_kind >= 0.8) & (u_kind < 0.9), rand, inputs)
    return inputs, labels


# ---------------------------------------------------------------------------------------------
# Evaluation


def eval_windows(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """``(offset, first_scored_position)`` of each evaluation window (see module doc)."""
    targets = n_tokens - 1
    if targets < 1:
        return []
    if targets <= seq_len:
        return [(0, 0)]
    full = targets // seq_len
    wins = [(k * seq_len, 0) for k in range(full)]
    rest = targets - full * seq_len
    if rest:
        wins.append((targets - seq_len, seq_len - rest))
    return wins


def eval_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping scored windows covering the split once, ``batch_size`` windows at a time.

    ``y`` is -100 at positions not to score; sum the loss with ``ignore_index=-100``.
    """
    if batch_size < 1 or seq_len < 1:
        raise DataError(f"batch_size and seq_len must be >= 1, not {batch_size}, {seq_len}")
    n = len(tokens)
    wins = eval_windows(n, seq_len)
    if wins == [(0, 0)] and n - 1 < seq_len:  # the whole split is shorter than one window
        w = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
        yield w[:, :-1], w[:, 1:]
        return
    for start in range(0, len(wins), batch_size):
        chunk = wins[start : start + batch_size]
        offs = np.array([o for o, _ in chunk], dtype=np.int64)
        w = _windows(tokens, offs, seq_len + 1)
        x, y = w[:, :-1], w[:, 1:].clone()
        for row, (_, first) in enumerate(chunk):
            if first:
                y[row, :first] = IGNORE_INDEX
        yield x, y


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """``total_nll / (ln 2 * n_bytes)``: summed token NLL in nats over the scored text's bytes."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, not {n_bytes}")
    return float(total_nll_nats) / (math.log(2) * n_bytes)
