"""Hugging Face in and out: grow HF models through torch.export, fold, export, reload."""

import pytest
import torch

import msgc
from msgc.errors import GrowthError
from msgc.interop.hf import export_hf

transformers = pytest.importorskip("transformers")
VOCAB = 61


def _gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2,
                                     n_head=2, use_cache=False, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), dict(hidden=32, heads=4, ffn=96, layers=3)


def _llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=16,
                                      use_cache=False, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(config), dict(hidden=32, heads=8, kv_heads=4, ffn=64,
                                                       layers=3)


def _bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, pad_token_id=0)
    return transformers.BertForMaskedLM(config), dict(hidden=32, heads=4, ffn=64, layers=3)


FAMILIES = {"gpt2": _gpt2, "llama": _llama, "bert": _bert}


def _logits(output):
    return output.logits if hasattr(output, "logits") else output[0]


def _train_a_few_steps(grown, ids, steps=3):
    grown.train()
    optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = _logits(grown(ids)).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("family", FAMILIES)
def test_grow_train_fold_export_reload(family, tmp_path):
    torch.manual_seed(0)
    model, sizes = FAMILIES[family]()
    model.eval()
    ids = torch.randint(1, VOCAB, (2, 8))
    grown = msgc.grow(model, (ids,), init_std=0.5, **sizes)
    with torch.no_grad():
        expected = _logits(model(ids))
        torch.testing.assert_close(_logits(grown.eval()(ids)), expected, rtol=1e-5, atol=1e-5)
    grown.set_masks(0.5)
    _train_a_few_steps(grown, ids)
    grown.set_masks(1.0)
    folded = msgc.fold(grown).eval()
    export_hf(folded, model, tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == sizes["layers"]
    with torch.no_grad():
        torch.testing.assert_close(_logits(reloaded(ids)), _logits(folded(ids)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dim", ["hidden", "heads", "ffn", "layers", "kv_heads"])
def test_each_dimension_preserved(family, dim):
    torch.manual_seed(0)
    model, sizes = FAMILIES[family]()
    if dim not in sizes:
        pytest.skip(f"{family} has no separate {dim}")
    ids = torch.randint(1, VOCAB, (2, 8))
    targets = {dim: sizes[dim]}
    if dim == "kv_heads":
        targets["heads"] = sizes["heads"]
    # verify=False: the comparison below with the HF model's own logits is the check
    grown = msgc.grow(model, (ids,), init_std=1.0, verify=False, **targets).eval()
    with torch.no_grad():
        expected = _logits(model.eval()(ids))
        torch.testing.assert_close(_logits(grown(ids)), expected, rtol=1e-5, atol=1e-5)
        grown.set_masks(1.0)
        assert not torch.allclose(_logits(grown(ids)), expected, rtol=1e-3, atol=1e-3)


def test_export_refuses_sizes_the_config_rejects(tmp_path):
    """GPT-2 derives head_dim = hidden / heads: hidden alone cannot grow for export."""
    torch.manual_seed(0)
    model, _ = _gpt2()
    ids = torch.randint(1, VOCAB, (2, 8))
    grown = msgc.grow(model, (ids,), hidden=24)
    grown.set_masks(1.0)
    with pytest.raises(GrowthError, match="GPT2Config|do not fit"):
        export_hf(msgc.fold(grown), model, tmp_path)
