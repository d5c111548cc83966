"""Corpus, tokenizers, token caches, batch sampling, MLM masking and bits per byte."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from msgc.errors import DataError
from msgc.train import tokenizer as tokmod
from msgc.train.corpus import (
    SHAKESPEARE_SPLITS,
    load_corpus,
    play_files,
    play_to_text,
    split_text,
)
from msgc.train.data import (
    BatchSampler,
    bits_per_byte,
    eval_batches,
    load_token_data,
    mlm_batch,
)
from msgc.train.tokenizer import ByteTokenizer, default_cache_dir, get_tokenizer

ODD_TEXT = "héllo wörld — naïve café ☃ 日本語 🎉\n\ttabs  [MASK] \x00 \r\n  trailing  "


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("shakespeare")


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bpe-cache")


@pytest.fixture(scope="module")
def bpe(corpus, bpe_dir):
    return get_tokenizer("bpe", 1024, corpus["train"], bpe_dir)


# ---------------------------------------------------------------------------------- corpus


def test_shakespeare_whole_play_splits(corpus):
    assert set(corpus) == {"train", "val", "test"}
    assert all(corpus[s].strip() for s in corpus)
    files = play_files()
    assert len(files) == 38
    held = {n: s for s, names in SHAKESPEARE_SPLITS.items() for n in names}
    for name, path in files.items():
        text = play_to_text(path.read_text(encoding="utf-8"))
        assert text.strip()
        where = [s for s in corpus if text in corpus[s]]
        assert where == [held.get(name, "train")], name
    assert "Fair is foul, and foul is fair" in corpus["val"]
    assert "To be, or not to be" in corpus["test"]
    assert "Fair is foul" not in corpus["train"] + corpus["test"]
    n = {s: len(corpus[s].encode()) for s in corpus}
    assert 3.8e6 < n["train"] < 4.3e6 and 0.15e6 < n["val"] < 0.3e6 and 0.4e6 < n["test"] < 0.6e6


def test_play_conversion_layout():
    md = (
        "# A Play\n\n## ACT I\n\n_Enter A and\nB_\n\n**A**  \nFirst line,  \nsecond \\-- line.\n\n"
        "_Exit B_\n\nStill A.\n\n**B**  \n[Aside]_  \nQuiet *[Reads.]* now.\n"
    )
    assert play_to_text(md) == "A:\nFirst line,\nsecond -- line.\nStill A.\n\nB:\nQuiet now.\n\n"


def test_text_file_source(tmp_path):
    text = "".join(f"line {i} é\n" for i in range(2000))
    path = tmp_path / "mine.txt"
    path.write_text(text, encoding="utf-8")
    c = load_corpus(str(path))
    assert c["train"] + c["val"] + c["test"] == text
    assert all(c[s].endswith("\n") for s in c)
    total = len(text.encode())
    for s, frac in (("val", 0.05), ("test", 0.05)):
        assert abs(len(c[s].encode()) / total - frac) < 0.01
    assert load_corpus(str(path)) == c  # deterministic


def test_folder_source(tmp_path):
    for i in range(20):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}\n" * 50, encoding="utf-8")
    (tmp_path / "notes.md").write_text("markdown notes\n" * 10, encoding="utf-8")
    (tmp_path / "skip.csv").write_text("a,b\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    c = load_corpus(str(tmp_path))
    # 21 non-empty files sorted by name: doc00..doc19, notes.md -> 1 val, 1 test file
    assert c["test"] == "markdown notes\n" * 10
    assert c["val"] == "document 19\n" * 50
    assert c["train"] == "".join(f"document {i}\n" * 50 for i in range(19))
    assert "a,b" not in "".join(c.values())


def test_small_folder_falls_back_to_byte_rule(tmp_path):
    (tmp_path / "a.txt").write_text("".join(f"a{i}\n" for i in range(500)), encoding="utf-8")
    (tmp_path / "b.md").write_text("".join(f"b{i}\n" for i in range(500)), encoding="utf-8")
    c = load_corpus(str(tmp_path))
    assert c["train"].startswith("a0\n") and c["test"].endswith("b499\n")
    assert (
        c["train"] + c["val"] + c["test"]
        == (tmp_path / "a.txt").read_text() + (tmp_path / "b.md").read_text()
    )


def test_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt or .md"):
        load_corpus(str(tmp_path / "empty"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(tmp_path / "blank"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 100)
    with pytest.raises(DataError, match="UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"))
    with pytest.raises(DataError, match="too small"):
        split_text("one line only\n")
    with pytest.raises(DataError, match="257"):
        ByteTokenizer(256)
    with pytest.raises(DataError, match="vocab_size"):
        get_tokenizer("bpe", 200, "some text", tmp_path)
    with pytest.raises(DataError, match="bpe"):
        get_tokenizer("wordpiece", 1000, "some text", tmp_path)


# ------------------------------------------------------------------------------ tokenizers


def test_bpe_exact_vocab_and_round_trip(bpe, corpus):
    assert bpe.vocab_size == 1024
    assert bpe._tok.get_vocab_size(with_added_tokens=True) == 1024
    assert bpe.decode([bpe.mask_id]) == "[MASK]"
    ids = bpe.encode(corpus["val"])
    assert max(ids) < 1024 and min(ids) >= 0
    assert bpe.decode(ids) == corpus["val"]
    assert len(corpus["val"].encode()) / len(ids) > 2.0  # it does compress
    for text in (ODD_TEXT, "", " ", "\n\n", "[MASK]", "ẞ" * 7):
        out = bpe.encode(text)
        assert bpe.mask_id not in out
        assert bpe.decode(out) == text
        assert b"".join(bpe.token_bytes(i) for i in out) == text.encode()


def test_bpe_is_cached(bpe, corpus, bpe_dir, monkeypatch):
    path = tokmod.bpe_cache_path(bpe_dir, corpus["train"], 1024)
    assert path.is_file()
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached BPE was retrained")

    monkeypatch.setattr(tokmod, "train_bpe", no_training)
    again = get_tokenizer("bpe", 1024, corpus["train"], bpe_dir)
    assert path.stat().st_mtime_ns == mtime
    assert again.fingerprint == bpe.fingerprint
    assert again.encode(ODD_TEXT) == bpe.encode(ODD_TEXT)


def test_bpe_small_corpus_never_exceeds_vocab(tmp_path):
    tok = get_tokenizer("bpe", 5000, "tiny text, tiny text\n" * 3, tmp_path)
    assert tok.vocab_size == 5000 and tok.n_tokens <= 5000
    assert tok.decode(tok.encode(ODD_TEXT)) == ODD_TEXT


def test_byte_tokenizer(tmp_path):
    tok = get_tokenizer("byte", 300, "ignored", tmp_path)
    assert tok.vocab_size == 300 and tok.mask_id == 256
    ids = tok.encode(ODD_TEXT)
    assert ids == list(ODD_TEXT.encode()) and max(ids) < 256
    assert tok.decode(ids) == ODD_TEXT
    assert tok.decode(ids + [tok.mask_id]) == ODD_TEXT


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MSGC_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("MSGC_CACHE")
    assert str(default_cache_dir()).endswith(os.path.join(".cache", "msgc"))


# ------------------------------------------------------------------------------ token data


def test_token_data_cached_memmap(tmp_path):
    text = "".join(f"Line {i}: ünïcode ok\n" for i in range(3000))
    corpus = split_text(text)
    tok = ByteTokenizer(257)
    data = load_token_data(corpus, tok, tmp_path)
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    for s in ("train", "val", "test"):
        arr = data.split(s)
        assert data.bytes[s] == len(corpus[s].encode()) == len(arr)
        assert data.scored_bytes[s] == data.bytes[s] - 1
        assert tok.decode(arr.tolist()) == corpus[s]
    files = sorted((tmp_path / "tokens").glob("*.npy"))
    assert len(files) == 3
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = load_token_data(corpus, tok, tmp_path)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert np.array_equal(again.val, data.val)


def test_token_data_bpe_scored_bytes(bpe, corpus, bpe_dir):
    small = {s: corpus[s][:20000] for s in corpus}
    data = load_token_data(small, bpe, bpe_dir)
    for s in small:
        arr = data.split(s)
        assert int(arr.max()) < bpe.vocab_size
        scored = b"".join(bpe.token_bytes(int(i)) for i in arr[1:])
        assert data.scored_bytes[s] == len(scored)


# ------------------------------------------------------------------------------- batches


def test_batches_deterministic_and_shifted():
    tokens = np.arange(10_000, dtype=np.uint16)
    s = BatchSampler(tokens, batch_size=8, seq_len=32, seed=7)
    x, y = s.batch(5)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    x2, y2 = BatchSampler(tokens, 8, 32, seed=7).batch(5)  # a "resumed" sampler
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, s.batch(6)[0])
    assert not torch.equal(x, BatchSampler(tokens, 8, 32, seed=8).batch(5)[0])
    offs = np.concatenate([s.offsets(k) for k in range(200)])
    assert offs.min() >= 0 and offs.max() + 33 <= len(tokens)


def test_sharding_union_equals_single_process():
    tokens = np.arange(5000, dtype=np.uint16) % 1000
    single = BatchSampler(tokens, 12, 16, seed=3)
    for world in (2, 3, 4):
        for step in (0, 1, 99):
            parts = [BatchSampler(tokens, 12, 16, 3, r, world).batch(step) for r in range(world)]
            assert all(p[0].shape == (12 // world, 16) for p in parts)
            x, y = single.batch(step)
            assert torch.equal(torch.cat([p[0] for p in parts]), x)
            assert torch.equal(torch.cat([p[1] for p in parts]), y)
            mlm = [
                BatchSampler(tokens, 12, 16, 3, r, world).mlm(step, 1000, 1001)
                for r in range(world)
            ]
            xi, li = single.mlm(step, 1000, 1001)
            assert torch.equal(torch.cat([m[0] for m in mlm]), xi)
            assert torch.equal(torch.cat([m[1] for m in mlm]), li)
    with pytest.raises(DataError, match="multiple"):
        BatchSampler(tokens, 10, 16, 0, 0, 4)
    with pytest.raises(DataError, match="seq_len"):
        BatchSampler(tokens[:10], 4, 16, 0)


def test_mlm_proportions_and_labels():
    vocab, mask_id = 1000, 999
    x = torch.randint(0, 998, (128, 512), generator=torch.Generator().manual_seed(0))
    inputs, labels = mlm_batch(x, mask_id, vocab, torch.Generator().manual_seed(1))
    sel = labels != -100
    assert torch.equal(labels[sel], x[sel])
    assert torch.equal(inputs[~sel], x[~sel])  # unpredicted positions are untouched
    n = sel.sum().item()
    assert abs(n / x.numel() - 0.15) < 0.005
    masked = (inputs == mask_id) & sel
    same = (inputs == x) & sel
    other = sel & ~masked & ~same
    assert abs(masked.sum().item() / n - 0.8) < 0.015
    assert abs(same.sum().item() / n - 0.1) < 0.015  # ~0.1 + 0.1/vocab
    assert abs(other.sum().item() / n - 0.1) < 0.015
    assert inputs.max() < vocab and inputs.min() >= 0
    again = mlm_batch(x, mask_id, vocab, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    np_a = mlm_batch(x, mask_id, vocab, np.random.default_rng(4))
    np_b = mlm_batch(x, mask_id, vocab, np.random.default_rng(4))
    assert torch.equal(np_a[0], np_b[0]) and torch.equal(np_a[1], np_b[1])
    tiny = mlm_batch(torch.tensor([[5, 6]]), 9, 10, torch.Generator().manual_seed(0), prob=0.0)
    assert (tiny[1] != -100).sum() == 1  # never an empty loss


# ---------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("n,seq_len,batch", [(1001, 100, 3), (1000, 100, 4), (50, 100, 2)])
def test_eval_batches_score_every_target_once(n, seq_len, batch):
    tokens = np.arange(n, dtype=np.uint32)
    scored = []
    for x, y in eval_batches(tokens, batch, seq_len):
        assert x.shape[0] <= batch and x.shape[1] == min(seq_len, n - 1)
        keep = y != -100
        assert torch.equal(y[keep], x[keep] + 1)  # targets follow their inputs
        scored.append(y[keep])
    assert torch.equal(torch.sort(torch.cat(scored)).values, torch.arange(1, n))


def test_bits_per_byte():
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)
    # a uniform model over 256 byte values costs 8 bits per byte
    assert bits_per_byte(1234 * math.log(256), 1234) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
