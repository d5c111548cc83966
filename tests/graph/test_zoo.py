"""Grow every zoo model along every dimension it has, and all at once.

Each case checks, against the original model's outputs computed here (grow's own check is
off): preservation at c = 0 (fp32, relative error <= 1e-5), a measurable change at c = 1,
a finite gradient for every parameter at c = 0.5, fold(c = 1) == grown(c = 1), the target
sizes read back from the folded model by a fresh analysis (and the growth record agreeing),
original parameter names kept (shapes equal or bigger), the original model untouched, and
that the folded model grows again and still preserves. Targets a model cannot grow (kv
heads of MQA, or the hidden size through an op with no rule) are refused with an msgc error
that says why.
"""

from __future__ import annotations

import pytest
import torch

import msgc
from msgc.errors import MsgcError
from tests.graph.zoo import BY_NAME, VARIANTS, Variant, found_sizes

RTOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def outputs(model, inputs, train: bool = False):
    model.train(train)
    with torch.no_grad():
        return model(*inputs)


def make(variant: Variant, seed: int = 0):
    torch.manual_seed(seed)
    return variant.make().eval(), variant.inputs()


CASES = [pytest.param(v.name, case, id=f"{v.name}-{case}") for v in VARIANTS for case in v.cases]
REFUSED = [pytest.param(v.name, case, id=f"{v.name}-{case}")
           for v in VARIANTS for case in v.refused]


def assert_recorded(sizes: dict[str, int], found: dict[str, set[int]]) -> None:
    """Every size in a growth record is one the analysis finds in the model."""
    for key, value in sizes.items():
        assert value in found.get(key, set()), (key, value, found)


@pytest.mark.parametrize("name,case", CASES)
def test_grow(name: str, case: str) -> None:
    variant = BY_NAME[name]
    model, inputs = make(variant)
    targets = variant.cases[case]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = outputs(model, inputs)

    # verify=False: the comparisons below with the original model's outputs are the check
    grown = msgc.grow(model, example_inputs=inputs, init_std=1.0, seed=1, verify=False,
                      **targets)

    # the original model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert torch.equal(outputs(model, inputs), expected)

    # it did grow
    assert msgc.count_parameters(grown) > msgc.count_parameters(model)

    # preserved at c = 0
    grown.set_masks(0.0)
    assert rel_err(outputs(grown, inputs), expected) <= RTOL

    # changed at c = 1
    grown.set_masks(1.0)
    at_one = outputs(grown, inputs)
    assert rel_err(at_one, expected) > 1e-3

    # every parameter gets a finite gradient at c = 0.5, in train mode
    grown.set_masks(0.5)
    grown.train()
    grown.zero_grad()
    grown(*inputs).pow(2).mean().backward()
    for pname, p in grown.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    grown.zero_grad()

    # original names kept, shapes equal or bigger
    grown_sd = grown.state_dict()
    for k, v in before.items():
        assert k in grown_sd, f"{k} missing from the grown state_dict"
        g = grown_sd[k]
        assert g.dim() == v.dim() and all(a >= b for a, b in zip(g.shape, v.shape, strict=True)), k

    # fold at c = 1 equals grown at c = 1, to fp32 rounding: folding reorders float ops
    # (masks into weights, masked norms into plain ones), and with new weights at std 1.0 the
    # two orders' rounding differs by up to ~1.3e-5 on some CPUs (vit_conv_patches_cls); a
    # wrong fold is off by far more than 1e-4
    grown.set_masks(1.0)
    plain = msgc.fold(grown)
    assert not isinstance(plain, msgc.GrownModule)
    folded_out = outputs(plain, inputs)
    assert rel_err(folded_out, at_one) <= 1e-4
    assert rel_err(outputs(grown, inputs), at_one) == 0.0  # fold left the grown model alone

    # the folded model has the target sizes in every block, and the record says so
    found = found_sizes(plain, inputs)
    for key, value in targets.items():
        assert found[key] == {value}, (key, found)
    assert_recorded(grown.record.before, found_sizes(model, inputs))
    assert_recorded(grown.record.after, found)

    # the folded model grows again and still preserves
    again = msgc.grow(plain, example_inputs=inputs, init_std=1.0, seed=2, **variant.regrow)
    again.set_masks(0.0)
    assert rel_err(outputs(again, inputs), folded_out) <= RTOL


@pytest.mark.parametrize("name", ["nanogpt", "family_llama", "postln_encoder_token_types"])
def test_interleave(name: str) -> None:
    variant = BY_NAME[name]
    model, inputs = make(variant)
    expected = outputs(model, inputs)
    stacked = msgc.grow(model, example_inputs=inputs, layers=4, init_std=1.0)
    inter = msgc.grow(model, example_inputs=inputs, layers=4, init_std=1.0,
                      depth_placement="interleave")
    inter.set_masks(0.0)
    assert rel_err(outputs(inter, inputs), expected) <= RTOL
    inter.set_masks(1.0)
    stacked.set_masks(1.0)
    # copies of blocks: at c = 1 the interleaved order (0, 0', 1, 1') differs from the stacked
    # one (0, 1, 0', 1')
    assert rel_err(outputs(inter, inputs), outputs(stacked, inputs)) > 1e-4
    plain = msgc.fold(inter)
    assert rel_err(outputs(plain, inputs), outputs(inter, inputs)) <= 1e-5


@pytest.mark.parametrize("init", ["zeros", "copy"])
@pytest.mark.parametrize("name", ["nanogpt", "gqa_repeat_interleave"])
def test_inits(name: str, init: str) -> None:
    variant = BY_NAME[name]
    model, inputs = make(variant)
    expected = outputs(model, inputs)
    grown = msgc.grow(model, example_inputs=inputs, init=init, **variant.cases["combined"])
    grown.set_masks(0.0)
    assert rel_err(outputs(grown, inputs), expected) <= RTOL
    grown.set_masks(0.5)
    grown.train()
    grown(*inputs).pow(2).mean().backward()
    for pname, p in grown.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_zeros_init_new_weights_are_zero() -> None:
    variant = BY_NAME["manual_attention_nobias"]
    model, inputs = make(variant)
    grown = msgc.grow(model, example_inputs=inputs, init="zeros", ffn=48)
    w = dict(grown.named_parameters())["blocks.0.mlp.up.weight"]
    assert w.shape == (48, 16)
    assert torch.equal(w[:32], model.blocks[0].mlp.up.weight)
    assert torch.count_nonzero(w[32:]) == 0


def test_float64() -> None:
    variant = BY_NAME["family_llama"]
    model, inputs = make(variant)
    expected = outputs(model.double(), inputs)
    model.float()
    grown = msgc.grow(model, example_inputs=inputs, init_std=1.0, **variant.cases["combined"])
    grown = grown.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in grown.parameters())
    grown.set_masks(0.0)
    out = outputs(grown, inputs)
    assert out.dtype == torch.float64
    assert rel_err(out, expected) <= 1e-12
    grown.set_masks(1.0)
    assert rel_err(outputs(msgc.fold(grown), inputs), outputs(grown, inputs)) <= 1e-12


def test_untraceable_uses_export_and_honours_dropout() -> None:
    variant = BY_NAME["untraceable_export"]
    model, inputs = make(variant)
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    expected = outputs(model, inputs)
    grown = msgc.grow(model, example_inputs=inputs, hidden=24, heads=3, layers=3, init_std=1.0)
    grown.set_masks(0.0)
    grown.eval()
    assert rel_err(outputs(grown, inputs), expected) <= RTOL  # eval: no dropout
    torch.manual_seed(0)
    a = outputs(grown, inputs, train=True)
    b = outputs(grown, inputs, train=True)
    assert not torch.equal(a, b)  # train: dropout is live
    assert rel_err(a, expected) > 1e-3
    # batch and sequence sizes are not baked in
    short = inputs[0][:, :5]
    assert rel_err(outputs(grown, (short,)), outputs(model, (short,))) <= RTOL


@pytest.mark.parametrize("name", ["nanogpt", "family_gpt2", "manual_attention_nobias"])
def test_other_sequence_and_batch_sizes(name: str) -> None:
    variant = BY_NAME[name]
    model, inputs = make(variant)
    grown = msgc.grow(model, example_inputs=inputs, init_std=1.0, **variant.cases["combined"])
    grown.set_masks(0.0)
    other = (torch.randint(0, 32, (3, 11)),)
    assert rel_err(outputs(grown, other), outputs(model, other)) <= RTOL


def test_tied_weights_stay_tied() -> None:
    variant = BY_NAME["nanogpt"]
    model, inputs = make(variant)
    grown = msgc.grow(model, example_inputs=inputs, hidden=24)
    params = dict(grown.named_parameters(remove_duplicate=False))
    assert params["lm_head.weight"] is params["transformer.wte.weight"]
    assert params["lm_head.weight"].shape == (32, 24)


def test_analyze_finds_gqa_groups() -> None:
    variant = BY_NAME["gqa_repeat_interleave"]
    model, inputs = make(variant)
    reports = msgc.analyze(model, example_inputs=inputs)
    sizes = {}
    for r in reports:
        sizes.setdefault(r.name, set()).add(r.size)
    assert sizes["hidden"] == {16}
    assert sizes["ffn"] == {32}
    assert sizes["blocks"] == {2}


@pytest.mark.parametrize("name", ["mqa_repeat_interleave", "mqa_expand"])
def test_mqa_has_one_kv_head(name: str) -> None:
    """4 query heads share 1 key/value head: the analysis and the record say 1, not 4."""
    variant = BY_NAME[name]
    model, inputs = make(variant)
    found = found_sizes(model, inputs)
    assert (found["heads"], found["kv_heads"]) == ({4}, {1})
    grown = msgc.grow(model, example_inputs=inputs, heads=6)
    assert (grown.record.before["heads"], grown.record.before["kv_heads"]) == (4, 1)
    assert (grown.record.after["heads"], grown.record.after["kv_heads"]) == (6, 1)
    # head_dim 4: six query heads, still one key/value head
    attention = "layers.0.attention"
    assert grown.get_parameter(f"{attention}.wq.weight").shape == (24, 16)
    assert grown.get_parameter(f"{attention}.wk.weight").shape == (4, 16)
    grown.set_masks(1.0)
    found = found_sizes(msgc.fold(grown), inputs)
    assert (found["heads"], found["kv_heads"]) == ({6}, {1})


@pytest.mark.parametrize("name,case", REFUSED)
def test_refused(name: str, case: str) -> None:
    variant = BY_NAME[name]
    model, inputs = make(variant)
    targets, why = variant.refused[case]
    with pytest.raises(MsgcError, match=why):
        msgc.grow(model, example_inputs=inputs, **targets)


def test_pooler_is_not_ffn() -> None:
    variant = BY_NAME["postln_encoder_token_types"]
    model, inputs = make(variant)
    ffn = [r for r in msgc.analyze(model, example_inputs=inputs) if r.name == "ffn"]
    assert all(m.startswith("layer.") for r in ffn for m in r.members), ffn
    grown = msgc.grow(model, example_inputs=inputs, ffn=48)
    assert grown.get_parameter("pooler.weight").shape == (16, 16)


def test_moe_grows_each_expert_not_the_router() -> None:
    """ffn grows every expert's hidden layer; the router's expert count stays, and so do
    the rotary table and the routing (top-k, scatter), which no growing dim reaches."""
    model, inputs = make(BY_NAME["rotary_outer_topk_moe"])
    grown = msgc.grow(model, example_inputs=inputs, ffn=48, hidden=24)
    for e in range(4):
        assert grown.get_parameter(f"blocks.0.moe.experts.{e}.w1.weight").shape == (48, 24)
        assert grown.get_parameter(f"blocks.1.moe.experts.{e}.w2.weight").shape == (24, 48)
    assert grown.get_parameter("blocks.0.moe.router.weight").shape == (4, 24)


def test_no_grad_and_autocast_regions_are_analysed() -> None:
    """torch.export wraps @torch.no_grad() and autocast regions in higher-order ops; msgc
    inlines their bodies, so the heads inside an autocast region are found and grow."""
    from msgc.graph.trace import to_ir

    model, inputs = make(BY_NAME["export_no_grad_autocast_rotary"])
    ir = to_ir(model, inputs)
    targets = {str(n.target) for n in ir.graph.nodes}
    assert "aten.outer.default" in targets  # the rotary table, from a no_grad body
    assert not any("higher_order" in t or "wrap_with" in t for t in targets)
    heads = [r for r in msgc.analyze(model, example_inputs=inputs) if r.name == "heads"]
    assert heads and heads[0].size == 2
