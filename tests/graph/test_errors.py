"""One test per error a user can cause: each is an msgc exception that says what to change."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import msgc
from msgc.errors import GraphError, GrowthError, MsgcError
from tests.graph.zoo import BY_NAME, VOCAB, found_sizes, token_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name: str):
    torch.manual_seed(0)
    variant = BY_NAME[name]
    return variant.make().eval(), variant.inputs()


class TinyLM(nn.Module):
    """Embedding, one pre-LN residual block whose middle `op` is swappable, a head."""

    def __init__(self, op, dim: int = 16):
        super().__init__()
        self.op = op
        self.emb = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.fc(self.op(self.norm(x)))
        return self.head(x)


def _cumsum(x):
    return torch.cumsum(x, dim=-1)


def _einsum(x):
    return torch.einsum("btc,btc->btc", x, x)


def _softmax(x):
    return F.softmax(x, dim=-1)


def _computed_slice(x):
    half = x.size(-1) // 2
    return torch.cat([x[..., :half], x[..., half:]], dim=-1)


def test_op_without_rule_is_named() -> None:
    """An op with no rule runs as it is; growing a dimension that reaches it is refused."""
    model, ids = TinyLM(_einsum), (token_ids(),)
    with pytest.raises(GraphError, match=r"node einsum \(.*einsum\): .*einsum, which has no "
                                         r"growth rule .*msgc ops.* on a dimension that grows"):
        msgc.grow(model, example_inputs=ids, hidden=24)
    assert any(r.name == "hidden" for r in msgc.analyze(model, example_inputs=ids))


def test_cumsum_over_hidden_names_node_and_op() -> None:
    model, ids = TinyLM(_cumsum), (token_ids(),)
    with pytest.raises(GraphError, match=r"node cumsum \(.*cumsum\).*cumsum over it"):
        msgc.grow(model, example_inputs=ids, hidden=24)
    # the analysis itself succeeds: only growing the hidden dim is refused
    assert any(r.name == "hidden" for r in msgc.analyze(model, example_inputs=ids))


def test_softmax_over_hidden() -> None:
    model, ids = TinyLM(_softmax), (token_ids(),)
    with pytest.raises(GraphError, match=r"node softmax .*softmax over it.*Grow other"):
        msgc.grow(model, example_inputs=ids, hidden=24)


def test_slice_of_grown_dim_with_computed_bound() -> None:
    model, ids = TinyLM(_computed_slice), (token_ids(),)
    with pytest.raises(GraphError, match=r"node getitem.*slicing with computed bounds"):
        msgc.grow(model, example_inputs=ids, hidden=24)


@pytest.mark.parametrize("sizes,what", [
    ({"hidden": 8}, "hidden: the model already has 16"),
    ({"ffn": 16}, "ffn: the model already has 32"),
    ({"heads": 1}, "heads: the model already has 2"),
    ({"layers": 1}, "layers: the model already has 2"),
])
def test_shrinking(sizes: dict, what: str) -> None:
    model, inputs = _model("family_gpt2")
    with pytest.raises(GrowthError, match=what) as info:
        msgc.grow(model, example_inputs=inputs, **sizes)
    assert "never" in str(info.value)


def test_heads_not_a_multiple_of_kv_heads() -> None:
    model, inputs = _model("gqa_repeat_interleave")
    with pytest.raises(GrowthError, match="multiple of kv_heads"):
        msgc.grow(model, example_inputs=inputs, heads=7, kv_heads=2)


def test_kv_heads_shrinking_the_group() -> None:
    model, inputs = _model("gqa_repeat_interleave")  # 2 kv heads x 2 query heads
    with pytest.raises(GrowthError, match="grow heads to at least 8"):
        msgc.grow(model, example_inputs=inputs, kv_heads=4)


def test_kv_heads_on_mha_differs_from_heads() -> None:
    model, inputs = _model("nanogpt")
    with pytest.raises(GrowthError, match="set kv_heads equal to heads"):
        msgc.grow(model, example_inputs=inputs, heads=4, kv_heads=2)
    grown = msgc.grow(model, example_inputs=inputs, heads=4, kv_heads=4)  # equal is fine
    # q, k and v for 4 heads of head_dim 8, each head with its own key/value head
    assert grown.get_parameter("transformer.h.0.attn.c_attn.weight").shape == (3 * 4 * 8, 16)
    grown.set_masks(1.0)
    found = found_sizes(msgc.fold(grown), inputs)
    assert (found["heads"], found["kv_heads"]) == ({4}, {4})


def test_fold_before_masks_are_one() -> None:
    model, inputs = _model("nanogpt")
    grown = msgc.grow(model, example_inputs=inputs, ffn=80)
    grown.set_masks(0.5)
    with pytest.raises(GrowthError, match=r"masks are at 0.5.*set_masks\(1.0\)"):
        msgc.fold(grown)
    with pytest.raises(GrowthError, match="expected a model returned by msgc.grow"):
        msgc.fold(model)


def test_growing_a_mid_ramp_model() -> None:
    model, inputs = _model("nanogpt")
    grown = msgc.grow(model, example_inputs=inputs, ffn=80)
    grown.set_masks(0.25)
    with pytest.raises(GrowthError, match="mid-growth.*fold it"):
        msgc.grow(grown, example_inputs=inputs, ffn=96)
    grown.set_masks(1.0)  # at 1 the grown model is folded and grown again
    again = msgc.grow(grown, example_inputs=inputs, ffn=96)
    assert again.record.before["ffn"] == 80


@pytest.mark.parametrize("c", [-0.1, 1.5, float("nan")])
def test_set_masks_out_of_range(c: float) -> None:
    model, inputs = _model("nanogpt")
    grown = msgc.grow(model, example_inputs=inputs, ffn=80)
    with pytest.raises(GrowthError, match=r"mask value must be in \[0, 1\]"):
        grown.set_masks(c)
    assert grown.mask_value == 0.0


class NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 32)
        self.proj = nn.Linear(32, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.proj(F.gelu(self.fc(self.norm(x))))
        return self.head(x)


def test_layers_without_blocks() -> None:
    model, ids = NoBlocks(), (token_ids(),)
    with pytest.raises(GrowthError, match="no repeated blocks"):
        msgc.grow(model, example_inputs=ids, layers=2)
    msgc.grow(model, example_inputs=ids, ffn=48, hidden=24)  # widths still grow


def test_heads_without_attention() -> None:
    with pytest.raises(GrowthError, match="no attention op"):
        msgc.grow(NoBlocks(), example_inputs=(token_ids(),), heads=4)


class DataDependent(nn.Module):
    """Control flow on tensor values: neither symbolic_trace nor torch.export can trace it."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, idx):
        x = self.norm(self.emb(idx))
        if x.sum() > 0:
            x = x * 2
        return self.head(x)


def test_untraceable_by_both_frontends() -> None:
    with pytest.raises(GraphError) as info:
        msgc.grow(DataDependent(), example_inputs=(token_ids(),), hidden=24)
    text = str(info.value)
    assert "symbolic_trace" in text and "torch.export" in text
    assert "DataDependent" in text


def test_example_inputs_that_do_not_run() -> None:
    model, _ = _model("nanogpt")
    with pytest.raises(MsgcError):
        msgc.grow(model, example_inputs=(torch.randint(0, VOCAB, (2, 8, 3)),), ffn=80)


@pytest.mark.parametrize("kwargs,match", [
    ({"init": "xavier"}, "init: must be one of"),
    ({"depth_placement": "middle"}, "depth_placement: must be stack or interleave"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    model, inputs = _model("nanogpt")
    with pytest.raises(GrowthError, match=match):
        msgc.grow(model, example_inputs=inputs, ffn=80, **kwargs)


def test_errors_are_msgc_errors() -> None:
    """Every error above derives from MsgcError, so the CLI prints it without a traceback."""
    assert issubclass(GraphError, MsgcError) and issubclass(GrowthError, MsgcError)


class _BreaksWhenOpen(torch.nn.Module):
    """A stand-in for a wrong grown graph: fine at mask 0, a shape error at mask 1."""

    def __init__(self, failure: str):
        super().__init__()
        self.mask_value, self.failure = 0.0, failure

    def set_masks(self, c: float) -> None:
        self.mask_value = c

    def forward(self, x):
        if self.mask_value == 1.0 and self.failure == "raise":
            return x @ torch.ones(x.shape[-1] + 1, 2)
        if self.mask_value == 1.0 and self.failure == "shape":
            return torch.cat([x, x], dim=-1)
        return x


@pytest.mark.parametrize("failure", ["raise", "shape"])
def test_verify_runs_every_new_path(failure: str) -> None:
    """verify opens the masks too: a graph that breaks only at 1 is refused, and its masks
    are put back where they were."""
    from msgc.errors import PreservationError
    from msgc.passes.verify import verify_new_paths

    x = torch.randn(2, 3)
    model = _BreaksWhenOpen(failure)
    with pytest.raises(PreservationError, match="at 1|mask 1"):
        verify_new_paths(x, model, (x,))
    assert model.mask_value == 0.0
    verify_new_paths(x, _BreaksWhenOpen("none"), (x,))
