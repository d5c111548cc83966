"""Tokenizers: a locally trained byte-level BPE, or raw bytes.

Both report ``vocab_size`` equal to the model's vocabulary (the size of its embedding and LM
head) and guarantee every id they emit is below it.

* ``"bpe"``: a byte-level BPE (GPT-2 style pre-tokenizer, no prefix space) trained with the
  ``tokenizers`` library on the training split to exactly ``vocab_size`` entries: the 256 byte
  symbols, the special token ``[MASK]`` (id 0, for MLM) and ``vocab_size - 257`` merges. On a
  corpus too small to learn that many merges the tokenizer has fewer entries and the top ids are
  never emitted (the model still sees ``vocab_size``). ``decode(encode(x)) == x`` for every
  string: text that spells ``[MASK]`` is encoded as ordinary bytes, never as the special id.
  The trained tokenizer is cached as JSON under ``<cache_dir>/tokenizers/``, keyed by the
  training text's fingerprint and ``vocab_size``; a second call loads it without training.
* ``"byte"``: ids 0..255 are the UTF-8 bytes, 256 is ``[MASK]``; needs ``vocab_size >= 257``
  (ids above 256 are never emitted). ``decode`` of ids that are not valid UTF-8 uses U+FFFD.

``cache_dir`` defaults to ``$MSGC_CACHE`` or ``~/.cache/msgc`` (``default_cache_dir``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

from msgc.errors import DataError
from msgc.train.corpus import corpus_fingerprint

MASK_TOKEN = "[MASK]"
TOKENIZER_KINDS = ("bpe", "byte")
BYTE_VOCAB = 257  # 256 bytes + [MASK]


def default_cache_dir() -> Path:
    """``$MSGC_CACHE`` if set, else ``~/.cache/msgc``."""
    env = os.environ.get("MSGC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "msgc"


@runtime_checkable
class Tokenizer(Protocol):
    kind: str
    vocab_size: int  # what the model sees; every id is below it
    mask_id: int
    fingerprint: str  # identifies the exact id mapping (keys the token caches)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one id stands for (empty for special ids)."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, ``[MASK]`` = 256."""

    kind = "byte"

    def __init__(self, vocab_size: int = BYTE_VOCAB):
        if vocab_size < BYTE_VOCAB:
            raise DataError(
                f"the byte tokenizer needs a vocabulary of at least {BYTE_VOCAB} (256 bytes + "
                f"[MASK]) but the model's vocab_size is {vocab_size}: raise vocab_size to "
                f"{BYTE_VOCAB} or more, or use train.tokenizer: bpe"
            )
        self.vocab_size = int(vocab_size)
        self.mask_id = 256
        self.fingerprint = "byte-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id]) if 0 <= token_id < 256 else b""

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode`` (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class BPETokenizer:
    """A trained byte-level BPE (``tokenizers.Tokenizer``) padded to the model's vocab size."""

    kind = "bpe"

    def __init__(self, tok, vocab_size: int):
        n = tok.get_vocab_size(with_added_tokens=True)
        if n > vocab_size:
            raise DataError(
                f"the BPE tokenizer has {n} entries, more than the model's vocab_size "
                f"{vocab_size}: delete the tokenizer cache or raise vocab_size"
            )
        mask_id = tok.token_to_id(MASK_TOKEN)
        if mask_id is None:
            raise DataError(f"the cached BPE tokenizer has no {MASK_TOKEN} token: delete it")
        tok.encode_special_tokens = True  # text "[MASK]" is ordinary text, never the special id
        self._tok = tok
        self.vocab_size = int(vocab_size)
        self.n_tokens = n  # entries actually learned (<= vocab_size)
        self.mask_id = int(mask_id)
        self.fingerprint = "bpe-" + hashlib.sha256(tok.to_str().encode()).hexdigest()[:24]
        self._special = {int(i) for i in tok.get_added_tokens_decoder()}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._special:
            return b""
        piece = self._tok.id_to_token(int(token_id))
        if piece is None:
            return b""
        table = _byte_decoder()
        return bytes(table[c] for c in piece)

    def save(self, path: str | os.PathLike) -> None:
        self._tok.save(str(path))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, learned={self.n_tokens})"


def _new_bpe_model():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def line_chunks(text: str, size: int = 1 << 16):
    """The text in pieces of about ``size`` characters, each ending at a line end."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        yield text[start:end]
        start = end


def train_bpe(text: str, vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE on ``text`` to ``vocab_size`` entries (no caching)."""
    from tokenizers import pre_tokenizers, trainers

    tok = _new_bpe_model()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(line_chunks(text), trainer=trainer, length=None)
    return BPETokenizer(tok, vocab_size)


def bpe_cache_path(cache_dir: str | os.PathLike, train_text: str, vocab_size: int) -> Path:
    """Where the BPE for (training text, vocab_size) is cached."""
    fp = corpus_fingerprint(train_text)[:24]
    return Path(cache_dir) / "tokenizers" / f"bpe-{fp}-v{vocab_size}.json"


def load_or_train_bpe(
    train_text: str, vocab_size: int, cache_dir: str | os.PathLike | None = None
) -> BPETokenizer:
    """The cached BPE for (train_text, vocab_size), trained and saved on the first call."""
    from tokenizers import Tokenizer as HFTokenizer

    path = bpe_cache_path(cache_dir or default_cache_dir(), train_text, vocab_size)
    if path.is_file():
        try:
            return BPETokenizer(HFTokenizer.from_file(str(path)), vocab_size)
        except Exception:  # a corrupt cache entry: retrain over it
            pass
    bpe = train_bpe(train_text, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        bpe.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return bpe


def get_tokenizer(
    kind: str,
    vocab_size: int,
    corpus_train_text: str,
    cache_dir: str | os.PathLike | None = None,
) -> Tokenizer:
    """The ``train.tokenizer`` named ``kind`` ("bpe" or "byte") for a model of ``vocab_size``."""
    if kind == "byte":
        return ByteTokenizer(vocab_size)
    if kind != "bpe":
        raise DataError(f"train.tokenizer must be one of {TOKENIZER_KINDS}, not {kind!r}")
    if vocab_size < BYTE_VOCAB:
        raise DataError(
            f"a byte-level BPE needs a vocabulary of at least {BYTE_VOCAB} (256 bytes + [MASK]) "
            f"but the model's vocab_size is {vocab_size}: raise vocab_size (4096-8192 suits "
            "the Shakespeare corpus)"
        )
    if not corpus_train_text:
        raise DataError("the training text is empty: the BPE has nothing to learn from")
    return load_or_train_bpe(corpus_train_text, vocab_size, cache_dir)
