"""msgc's own families exported as Hugging Face models: logits equal after reload."""

import pytest
import torch

from msgc.interop.families import export_family
from msgc.models import build_model
from msgc.spec import FamilyModelSpec

transformers = pytest.importorskip("transformers")

HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "bert": "BertForMaskedLM", "llama": "LlamaForCausalLM"}


def _arch(family, **sizes):
    base = dict(family=family, vocab_size=67, max_seq_len=16, hidden=32, heads=4, ffn=48,
                layers=2)
    if family == "llama":
        base.update(kv_heads=2, head_dim=12)  # head_dim free: heads * head_dim != hidden
    base.update(sizes)
    return FamilyModelSpec(**base)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
def test_family_round_trip(family, tmp_path):
    torch.manual_seed(0)
    arch = _arch(family)
    model = build_model(arch).eval()
    assert export_family(model, arch, tmp_path) == "hf"
    reloaded = getattr(transformers, HF_CLASSES[family]).from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 67, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids), rtol=1e-5, atol=1e-5)


def test_sizes_hf_rejects_fall_back_to_safetensors(tmp_path):
    arch = _arch("gpt2", head_dim=16)  # 4 heads x 16 != hidden 32: GPT2Config cannot say it
    model = build_model(arch)
    assert export_family(model, arch, tmp_path) == "safetensors"
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "model.json").exists()
    assert "head_dim" in (tmp_path / "NOT_HF.txt").read_text()
