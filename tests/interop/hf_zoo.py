"""Stock Hugging Face families, each built from a tiny random config, and what msgc does
with each dimension of each: grows it (function preserved), or refuses with an msgc error.

Every model is built exactly as its config class makes it (KV cache on, dict outputs).
`FAILS` is the expected-failure list: (family, dimension) -> a pattern of the msgc error and
why. A fix in msgc flips a case: test_hf_stock.py then fails until the entry is removed.
docs/hf-families.md is this file as a table (`python -m tests.interop.hf_zoo` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

VOCAB = 128
BATCH, SEQ = 2, 8
OTHER_SHAPE = (3, 5)  # batch and sequence stay dynamic: the grown model runs on these too
DIMS = ("hidden", "ffn", "heads", "kv_heads", "layers")
# modest growth from hidden 32, ffn 64 (128 where the code fixes it at 4 x hidden), 4 heads of
# 8 (2 key/value heads where grouped, 1 under multi-query) and 2 layers
TARGETS = {
    "hidden": {"hidden": 48},
    "ffn": {"ffn": 160},
    "heads": {"heads": 6},
    "kv_heads": {"kv_heads": 4, "heads": 8},
    "layers": {"layers": 3},
}
MHA = ("hidden", "ffn", "heads", "layers")  # no separate key/value heads in the config


@dataclass(frozen=True)
class Family:
    """A transformers model class, its tiny config and the dimensions the config expresses."""

    name: str  # row of the table
    model_type: str  # transformers config type
    model: str  # transformers model class
    config: dict
    features: str
    dims: tuple[str, ...] = DIMS

    def build(self) -> nn.Module:
        """The model exactly as transformers constructs it, with seed-0 random weights."""
        import transformers

        config = transformers.AutoConfig.for_model(self.model_type, **self.config)
        torch.manual_seed(0)
        return getattr(transformers, self.model)(config).eval()


def _decoder(**fields) -> dict:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return base | fields


def _mha_decoder(**fields) -> dict:
    base = _decoder(**fields)
    del base["num_key_value_heads"]
    return base


def _encoder(**fields) -> dict:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, pad_token_id=0)
    return base | fields


_GPT2 = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=64,
             bos_token_id=0, eos_token_id=0)
_MOE = dict(num_experts_per_tok=2)

FAMILIES = [
    Family("gpt2", "gpt2", "GPT2LMHeadModel", _GPT2, "Conv1D, fused qkv, learned positions",
           MHA),
    Family("gpt_bigcode", "gpt_bigcode", "GPTBigCodeForCausalLM",
           _GPT2 | dict(multi_query=True), "multi-query, fused qkv", DIMS),
    Family("gpt_neox", "gpt_neox", "GPTNeoXForCausalLM",
           _mha_decoder(use_parallel_residual=True),
           "partial rotary (1/4), parallel residual, fused qkv per head", MHA),
    Family("gptj", "gptj", "GPTJForCausalLM",
           dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                rotary_dim=4, bos_token_id=0, eos_token_id=0),
           "partial rotary (interleaved), parallel residual", MHA),
    Family("llama", "llama", "LlamaForCausalLM", _decoder(), "GQA, RoPE, SwiGLU, RMSNorm"),
    Family("mistral", "mistral", "MistralForCausalLM", _decoder(sliding_window=4),
           "sliding window (4 < sequence), GQA"),
    Family("qwen2", "qwen2", "Qwen2ForCausalLM", _decoder(), "qkv bias, GQA"),
    Family("qwen3", "qwen3", "Qwen3ForCausalLM", _decoder(head_dim=8), "q/k RMSNorm per head"),
    Family("gemma", "gemma", "GemmaForCausalLM", _decoder(head_dim=8),
           "scaled embeddings, GeGLU, (1 + w) RMSNorm"),
    Family("gemma2", "gemma2", "Gemma2ForCausalLM",
           _decoder(head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
           "attention and final logit soft-capping, alternating sliding window"),
    Family("phi", "phi", "PhiForCausalLM", _decoder(),
           "partial rotary (1/2), parallel attention and MLP, GQA"),
    Family("phi3", "phi3", "Phi3ForCausalLM", _decoder(original_max_position_embeddings=32),
           "fused qkv, fused gate/up"),
    Family("falcon", "falcon", "FalconForCausalLM",
           dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                ffn_hidden_size=64, multi_query=True, parallel_attn=True, alibi=False,
                bos_token_id=0, eos_token_id=0),
           "multi-query, fused qkv, parallel attention"),
    Family("bloom", "bloom", "BloomForCausalLM",
           dict(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, bos_token_id=0,
                eos_token_id=0),
           "ALiBi, fused qkv interleaved per head, embedding LayerNorm", MHA),
    Family("mpt", "mpt", "MptForCausalLM",
           dict(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2,
                max_seq_len=32),
           "ALiBi, fused qkv, no biases", MHA),
    Family("opt", "opt", "OPTForCausalLM",
           dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                num_attention_heads=4, max_position_embeddings=32, word_embed_proj_dim=32,
                bos_token_id=0, eos_token_id=0, pad_token_id=0),
           "learned positions with offset, ReLU", MHA),
    Family("starcoder2", "starcoder2", "Starcoder2ForCausalLM", _decoder(sliding_window=4),
           "sliding window, GQA, biases, GELU MLP"),
    Family("stablelm", "stablelm", "StableLmForCausalLM", _decoder(),
           "partial rotary (1/4), LayerNorm, GQA"),
    Family("mixtral", "mixtral", "MixtralForCausalLM", _decoder(num_local_experts=4, **_MOE),
           "Mixture of Experts (top-2 of 4)"),
    Family("qwen2_moe", "qwen2_moe", "Qwen2MoeForCausalLM",
           _decoder(moe_intermediate_size=64, shared_expert_intermediate_size=64,
                    num_experts=4, **_MOE),
           "Mixture of Experts with a shared expert"),
    Family("bert", "bert", "BertForMaskedLM", _encoder(), "encoder, post-LN", MHA),
    Family("deberta_v2", "deberta-v2", "DebertaV2ForMaskedLM",
           _encoder(relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
                    norm_rel_ebd="layer_norm", share_att_key=True,
                    position_biased_input=False),
           "encoder, disentangled relative-position attention", MHA),
    Family("electra", "electra", "ElectraForMaskedLM", _encoder(embedding_size=16),
           "encoder, embeddings projected to the hidden size", MHA),
    Family("distilbert", "distilbert", "DistilBertForMaskedLM",
           dict(vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                max_position_embeddings=32, pad_token_id=0),
           "encoder, GELU, tied head", MHA),
    Family("modernbert", "modernbert", "ModernBertForMaskedLM",
           _encoder(global_attn_every_n_layers=2, local_attention=4, pad_token_id=0),
           "encoder, RoPE, fused GeGLU, local/global attention", MHA),
]

BY_NAME = {f.name: f for f in FAMILIES}

_MQA = ("MQA", "multi-query: one key/value head serves every query head; there is no "
                "key/value layout to grow")
_BATCH_HEADS = ("mixes batch or sequence sizes with a dimension that grows",
                "{what} merges batch and heads into one dimension (batch * heads, ...)")

# (family, dimension) -> (pattern of the msgc error, why); every other case must grow
FAILS: dict[tuple[str, str], tuple[str, str]] = {
    ("gpt_bigcode", "kv_heads"): _MQA,
    ("falcon", "kv_heads"): _MQA,
    ("bloom", "heads"): (_BATCH_HEADS[0], _BATCH_HEADS[1].format(what="attention")),
    ("deberta_v2", "heads"): (_BATCH_HEADS[0],
                              _BATCH_HEADS[1].format(what="the relative-position bias")),
}


def token_ids(shape: tuple[int, int] = (BATCH, SEQ), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, shape, generator=g)


def cases() -> list[tuple[str, str]]:
    """Every (family, dimension) the matrix tests."""
    return [(f.name, dim) for f in FAMILIES for dim in f.dims]


def markdown_table() -> str:
    """The matrix as the markdown table of docs/hf-families.md, with the reasons below it."""
    reasons = list(dict.fromkeys(why for _, why in FAILS.values()))
    lines = ["| family | exercises | " + " | ".join(DIMS) + " |",
             "|---|---|" + "---|" * len(DIMS)]
    for f in FAMILIES:
        cells = [_cell(f, dim, reasons) for dim in DIMS]
        lines.append(f"| {f.name} (`{f.model}`) | {f.features} | " + " | ".join(cells) + " |")
    passed = sum(case not in FAILS for case in cases())
    lines += ["", f"{passed} of {len(cases())} cases grow, in {len(FAMILIES)} families. "
              "Refused:", ""]
    lines += [f"{k}. {why}" for k, why in enumerate(reasons, 1)]
    return "\n".join(lines) + "\n"


def _cell(family: Family, dim: str, reasons: list[str]) -> str:
    if dim not in family.dims:
        return "n/a"
    failure = FAILS.get((family.name, dim))
    return "grows" if failure is None else f"refused ({reasons.index(failure[1]) + 1})"


if __name__ == "__main__":
    print(markdown_table(), end="")
