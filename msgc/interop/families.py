"""msgc's reference families as Hugging Face models: config and parameter-name maps.

gpt2 -> GPT2LMHeadModel (Conv1D weights are the transposes of our Linear weights),
bert -> BertForMaskedLM, llama -> LlamaForCausalLM. Each map is the one place that knows
both naming schemes; the result is checked logit-for-logit before it is written.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from msgc.errors import GrowthError
from msgc.passes.verify import relative_error, run_eval

GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


@dataclass
class HFTarget:
    cls_name: str
    config: dict  # kwargs of the HF config class
    renames: list[tuple[str, str]]  # regex -> replacement over parameter names
    transposed: tuple[str, ...] = ()  # HF names (regex) whose weights are transposed


def _gpt2(arch) -> HFTarget:
    _require(arch.hidden == arch.heads * arch.head_dim, "GPT2Config derives head_dim as "
             "hidden / heads", arch)
    _require(arch.kv_heads == arch.heads, "GPT-2 has no grouped-query attention", arch)
    config = dict(vocab_size=arch.vocab_size, n_positions=arch.max_seq_len, n_embd=arch.hidden,
                  n_layer=arch.layers, n_head=arch.heads, n_inner=arch.ffn,
                  activation_function=GPT2_ACTIVATIONS[arch.activation],
                  layer_norm_epsilon=arch.norm_eps, resid_pdrop=arch.dropout,
                  embd_pdrop=arch.dropout, attn_pdrop=arch.dropout,
                  tie_word_embeddings=arch.tie_embeddings, use_cache=False)
    return HFTarget("GPT2LMHeadModel", config, [],
                    transposed=(r"\.attn\.c_attn\.weight$", r"\.attn\.c_proj\.weight$",
                                r"\.mlp\.c_fc\.weight$", r"\.mlp\.c_proj\.weight$"))


def _llama(arch) -> HFTarget:
    config = dict(vocab_size=arch.vocab_size, hidden_size=arch.hidden,
                  intermediate_size=arch.ffn, num_hidden_layers=arch.layers,
                  num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
                  head_dim=arch.head_dim, max_position_embeddings=arch.max_seq_len,
                  rms_norm_eps=arch.norm_eps, tie_word_embeddings=arch.tie_embeddings,
                  attention_dropout=arch.dropout, use_cache=False)
    return HFTarget("LlamaForCausalLM", config, [])


def _bert(arch) -> HFTarget:
    _require(arch.hidden == arch.heads * arch.head_dim, "BertConfig derives head_dim as "
             "hidden / heads", arch)
    config = dict(vocab_size=arch.vocab_size, hidden_size=arch.hidden,
                  num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                  intermediate_size=arch.ffn, hidden_act=BERT_ACTIVATIONS[arch.activation],
                  max_position_embeddings=arch.max_seq_len,
                  type_vocab_size=arch.type_vocab_size, layer_norm_eps=arch.norm_eps,
                  hidden_dropout_prob=arch.dropout, attention_probs_dropout_prob=arch.dropout,
                  tie_word_embeddings=arch.tie_embeddings)
    renames = [
        (r"^embeddings\.norm\.", "bert.embeddings.LayerNorm."),
        (r"^embeddings\.", "bert.embeddings."),
        (r"^layers\.(\d+)\.attn\.(query|key|value)\.", r"bert.encoder.layer.\1.attention.self.\2."),
        (r"^layers\.(\d+)\.attn\.out\.", r"bert.encoder.layer.\1.attention.output.dense."),
        (r"^layers\.(\d+)\.attn_norm\.", r"bert.encoder.layer.\1.attention.output.LayerNorm."),
        (r"^layers\.(\d+)\.mlp\.fc\.", r"bert.encoder.layer.\1.intermediate.dense."),
        (r"^layers\.(\d+)\.mlp\.proj\.", r"bert.encoder.layer.\1.output.dense."),
        (r"^layers\.(\d+)\.mlp_norm\.", r"bert.encoder.layer.\1.output.LayerNorm."),
        (r"^head\.dense\.", "cls.predictions.transform.dense."),
        (r"^head\.norm\.", "cls.predictions.transform.LayerNorm."),
        (r"^head\.decoder\.", "cls.predictions.decoder."),
        (r"^head\.bias$", "cls.predictions.bias"),
    ]
    return HFTarget("BertForMaskedLM", config, renames)


TARGETS = {"gpt2": _gpt2, "llama": _llama, "bert": _bert}


def _require(condition: bool, why: str, arch) -> None:
    if not condition:
        raise GrowthError(f"export --hf: {why}, but this model has hidden={arch.hidden}, "
                          f"heads={arch.heads}, kv_heads={arch.kv_heads}, "
                          f"head_dim={arch.head_dim}")


def to_hf(model: nn.Module, arch) -> nn.Module:
    """The HF model equal to msgc family `model` of architecture `arch` (a FamilyModelSpec)."""
    import transformers

    target = TARGETS[arch.family](arch)
    cls = getattr(transformers, target.cls_name)
    config_cls = cls.config_class
    try:
        hf = cls(config_cls(**target.config))
    except (ValueError, TypeError) as exc:
        raise GrowthError(f"export --hf: {config_cls.__name__} rejects {target.config}: "
                          f"{exc}") from exc
    state = {}
    for name, value in model.state_dict().items():
        hf_name = _renamed(name, target.renames)
        if any(re.search(p, hf_name) for p in target.transposed):
            value = value.t()
        state[hf_name] = value.contiguous()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    params = dict(hf.named_parameters())
    untouched = [n for n in missing if n in params and n not in state]
    if [n for n in untouched if not _tied_elsewhere(hf, n, state)]:
        raise GrowthError(f"export --hf: no weights for {untouched[:5]} in {target.cls_name}")
    if [n for n in unexpected if not n.endswith(("rope_cos", "rope_sin"))]:
        raise GrowthError(f"export --hf: {target.cls_name} has no place for {unexpected[:5]}")
    _check(model, hf, arch)
    return hf


def _renamed(name: str, renames: list[tuple[str, str]]) -> str:
    for pattern, replacement in renames:
        new = re.sub(pattern, replacement, name)
        if new != name:
            return new
    return name


def _tied_elsewhere(hf: nn.Module, name: str, state: dict) -> bool:
    params = dict(hf.named_parameters(remove_duplicate=False))
    return any(o != name and o in state and p is params[name] for o, p in params.items())


def _check(model: nn.Module, hf: nn.Module, arch) -> None:
    ids = torch.randint(0, arch.vocab_size, (2, min(8, arch.max_seq_len)),
                        generator=torch.Generator().manual_seed(0))
    expected = run_eval(model, (ids,))
    actual = run_eval(hf, (ids,)).logits
    error = relative_error(expected, actual)
    if not error <= 1e-4:
        raise GrowthError(f"export --hf: the {type(hf).__name__} does not reproduce the "
                          f"model (relative error {error:.3g})")


def export_family(model: nn.Module, arch, out: Path) -> str:
    """save_pretrained of the HF model where the sizes allow; else safetensors + spec.

    Returns what was written: "hf" or "safetensors".
    """
    from safetensors.torch import save_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        to_hf(model, arch).save_pretrained(out)
        return "hf"
    except GrowthError as exc:
        save_model(model, str(out / "model.safetensors"))
        (out / "model.json").write_text(arch.model_dump_json(indent=2) + "\n")
        (out / "NOT_HF.txt").write_text(f"{exc}\nWrote model.safetensors + model.json "
                                        "(msgc's own format) instead.\n")
        return "safetensors"
