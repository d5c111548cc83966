"""Tests for msgc.spec: validation rules, loading, round trips, architectures per step."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from msgc.errors import SpecError
from msgc.spec import (
    CustomModelSpec,
    FamilyModelSpec,
    Spec,
    load_custom_model,
    load_spec,
    parse_spec,
    spec_json_schema,
)

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
BUNDLED = sorted(SPECS_DIR.glob("*.yaml"))


def base() -> dict[str, Any]:
    """A valid gpt2 spec with three growth stages."""
    return {
        "name": "t",
        "model": {
            "family": "gpt2", "vocab_size": 64, "max_seq_len": 32, "hidden": 32,
            "heads": 2, "ffn": 64, "layers": 2,
        },
        "growth": {
            "ramp_steps": 10,
            "stages": [
                {"step": 20, "hidden": 64, "heads": 4},
                {"step": 40, "ffn": 128},
                {"step": 60, "layers": 4},
            ],
        },
        "train": {"steps": 100, "seq_len": 16},
    }


def custom_base() -> dict[str, Any]:
    """A valid spec with a custom model and two stages."""
    data = base()
    data["model"] = {"module": "pkg.mod:factory", "kwargs": {"width": 4}, "trust_code": True}
    data["growth"]["stages"] = [{"step": 20, "hidden": 8}, {"step": 40, "hidden": 16}]
    return data


def mutated(change: Callable[[dict[str, Any]], Any], data: dict[str, Any] | None = None) -> dict:
    """A copy of `data` (default: base()) with `change` applied."""
    data = copy.deepcopy(data if data is not None else base())
    change(data)
    return data


def model(d: dict) -> dict:
    return d["model"]


def stages(d: dict) -> list[dict]:
    return d["growth"]["stages"]


BAD_SPECS: list[tuple[str, Callable[[dict], Any], str]] = [
    ("kv_heads divides heads", lambda d: model(d).update(kv_heads=3), "model.kv_heads"),
    ("gpt2 has no grouped kv heads", lambda d: model(d).update(kv_heads=1), "model.kv_heads"),
    ("head_dim defaults need hidden % heads", lambda d: model(d).update(hidden=33),
     "model.head_dim"),
    ("llama needs silu", lambda d: model(d).update(family="llama", activation="gelu"),
     "model.activation"),
    ("gpt2 has no silu", lambda d: model(d).update(activation="silu"), "model.activation"),
    ("bad activation", lambda d: model(d).update(activation="tanh"), "model.activation"),
    ("type_vocab_size bert only", lambda d: model(d).update(type_vocab_size=2),
     "model.type_vocab_size"),
    ("llama head_dim even", lambda d: model(d).update(family="llama", head_dim=15),
     "model.head_dim"),
    ("zero size", lambda d: model(d).update(hidden=0), "model.hidden"),
    ("negative size", lambda d: model(d).update(layers=-1), "model.layers"),
    ("string for int", lambda d: model(d).update(vocab_size="abc"), "model.vocab_size"),
    ("numeric string for int", lambda d: model(d).update(vocab_size="64"), "model.vocab_size"),
    ("bool for int", lambda d: model(d).update(layers=True), "model.layers"),
    ("float for int", lambda d: model(d).update(ffn=64.0), "model.ffn"),
    ("dropout below 1", lambda d: model(d).update(dropout=1.0), "model.dropout"),
    ("norm_eps positive", lambda d: model(d).update(norm_eps=0.0), "model.norm_eps"),
    ("unknown family", lambda d: model(d).update(family="t5"), "model.family"),
    ("neither family nor module", lambda d: model(d).pop("family"), "model:"),
    ("unknown model key", lambda d: model(d).update(hiden=3), "model.hiden"),
    ("unknown top-level key", lambda d: d.update(traning={}), "traning"),
    ("unknown train key", lambda d: d["train"].update(stpes=3), "train.stpes"),
    ("missing train.steps", lambda d: d["train"].pop("steps"), "train.steps"),
    ("missing name", lambda d: d.pop("name"), "name"),
    ("bad schedule", lambda d: d["train"].update(schedule="step"), "train.schedule"),
    ("lr positive", lambda d: d["train"].update(lr=0.0), "train.lr"),
    ("lr not a string", lambda d: d["train"].update(lr="fast"), "train.lr"),
    ("min_lr_ratio at most 1", lambda d: d["train"].update(min_lr_ratio=1.5),
     "train.min_lr_ratio"),
    ("warmup shorter than run", lambda d: d["train"].update(warmup_steps=100),
     "train.warmup_steps"),
    ("wsd decay after the warmup", lambda d: d["train"].update(
        schedule="wsd", warmup_steps=50, decay_fraction=0.6), "train.decay_fraction"),
    ("decay_fraction at most 1", lambda d: d["train"].update(decay_fraction=1.5),
     "train.decay_fraction"),
    ("seq_len fits the model", lambda d: d["train"].update(seq_len=64), "train.seq_len"),
    ("bad dtype", lambda d: d["train"].update(dtype="fp8"), "train.dtype"),
    ("ramp_steps at least 1", lambda d: d["growth"].update(ramp_steps=0), "growth.ramp_steps"),
    ("init_std positive", lambda d: d["growth"].update(init_std=-0.1), "growth.init_std"),
    ("bad init", lambda d: d["growth"].update(init="xavier"), "growth.init"),
    ("lr_scale positive", lambda d: d["growth"].update(lr_scale=0), "growth.lr_scale"),
    ("stage lr_scale positive", lambda d: stages(d)[1].update(lr_scale=-1.0),
     "growth.stages[1].lr_scale"),
    ("stage lr_restart positive", lambda d: stages(d)[1].update(lr_restart=0),
     "growth.stages[1].lr_restart"),
    ("stage needs a size, not only lr_scale",
     lambda d: (stages(d)[1].pop("ffn"), stages(d)[1].update(lr_scale=0.5)),
     "growth.stages[1]:"),
    ("stage step at least 1", lambda d: stages(d)[0].update(step=0), "growth.stages[0].step"),
    ("stage names a size", lambda d: stages(d)[1].pop("ffn"), "growth.stages[1]:"),
    ("stage cannot grow head_dim", lambda d: stages(d)[1].update(head_dim=32),
     "growth.stages[1].head_dim"),
    ("stage unknown key", lambda d: stages(d)[1].update(width=3), "growth.stages[1].width"),
    ("stage steps increase", lambda d: stages(d)[1].update(step=20), "growth.stages[1].step"),
    ("stages a ramp apart", lambda d: stages(d)[1].update(step=25), "growth.stages[1].step"),
    ("stage before the end", lambda d: stages(d)[2].update(step=100), "growth.stages[2].step"),
    ("last ramp finishes", lambda d: stages(d)[2].update(step=95), "growth.stages[2].step"),
    ("stage grows past the model", lambda d: stages(d)[0].update(hidden=32),
     "growth.stages[0].hidden"),
    ("stage grows past earlier stages", lambda d: stages(d)[2].update(heads=4),
     "growth.stages[2].heads"),
    ("stage keeps heads % kv_heads", lambda d: stages(d)[0].update(heads=4, kv_heads=3),
     "growth.stages[0].kv_heads"),
    ("carried kv_heads must divide grown heads",
     lambda d: (model(d).update(family="llama", kv_heads=1, heads=2, head_dim=16),
                stages(d)[0].update(kv_heads=2, heads=4), stages(d)[2].update(heads=5)),
     "growth.stages[2].heads"),
    ("stage size positive", lambda d: stages(d)[1].update(ffn=-5), "growth.stages[1].ffn"),
]


@pytest.mark.parametrize(("change", "path"), [(c, p) for _, c, p in BAD_SPECS],
                         ids=[name for name, _, _ in BAD_SPECS])
def test_each_rule_names_the_field(change: Callable[[dict], Any], path: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(mutated(change), source="bad.yaml")
    assert str(info.value).startswith(f"bad.yaml: {path}"), "one problem, its path first"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d["model"].update(module="no_colon"), "model.module"),
        (lambda d: d["model"].update(trust_code="yes"), "model.trust_code"),
        (lambda d: d["model"].update(family="gpt2"), "model: needs exactly one of"),
        (lambda d: stages(d)[1].update(hidden=8), "growth.stages[1].hidden"),
    ],
    ids=["module form", "trust_code bool", "family and module", "custom sizes grow"],
)
def test_custom_model_rules(change: Callable[[dict], Any], path: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(mutated(change, custom_base()), source="bad.yaml")
    assert str(info.value).startswith(f"bad.yaml: {path}"), "one problem, its path first"


def test_rule_messages_say_what_to_change() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(mutated(lambda d: stages(d)[1].update(step=25)))
    assert "move this stage to step 30 or later" in str(info.value)
    with pytest.raises(SpecError, match="did you mean `hidden`"):
        parse_spec(mutated(lambda d: model(d).update(hiden=3)))
    with pytest.raises(SpecError, match="`ramp_steps` belongs in another section"):
        parse_spec(mutated(lambda d: d["train"].update(ramp_steps=3)))


def test_every_problem_is_reported() -> None:
    data = mutated(lambda d: (model(d).update(hidden=0), d["train"].update(lr=-1.0)))
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    message = str(info.value)
    assert "2 problems" in message and "model.hidden" in message and "train.lr" in message


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(SpecError, match="top level must be a mapping"):
        parse_spec([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("gpt2", {"tie_embeddings": True, "norm_eps": 1e-5, "activation": "gelu",
                  "type_vocab_size": None}),
        ("bert", {"tie_embeddings": True, "norm_eps": 1e-12, "activation": "gelu",
                  "type_vocab_size": 2}),
        ("llama", {"tie_embeddings": False, "norm_eps": 1e-5, "activation": "silu",
                   "type_vocab_size": None}),
    ],
)
def test_family_defaults_are_resolved(family: str, expected: dict[str, Any]) -> None:
    spec = parse_spec(mutated(lambda d: model(d).update(family=family)))
    assert isinstance(spec.model, FamilyModelSpec)
    assert spec.model.kv_heads == 2 and spec.model.head_dim == 16
    assert {key: getattr(spec.model, key) for key in expected} == expected


def test_explicit_values_beat_family_defaults() -> None:
    data = mutated(lambda d: model(d).update(
        family="bert", tie_embeddings=False, norm_eps=1e-6, activation="relu",
        type_vocab_size=3, head_dim=8))
    m = parse_spec(data).model
    assert (m.tie_embeddings, m.norm_eps, m.activation, m.type_vocab_size) == (
        False, 1e-6, "relu", 3)
    assert m.head_dim == 8
    llama = parse_spec(mutated(lambda d: model(d).update(family="llama", kv_heads=1))).model
    assert (llama.heads, llama.kv_heads) == (2, 1)


def test_head_dim_is_free_of_hidden() -> None:
    data = mutated(lambda d: model(d).update(hidden=33, heads=3, head_dim=64))
    assert parse_spec(data).model.head_dim == 64


def test_arch_at_applies_stages_up_to_step() -> None:
    spec = parse_spec(base())
    expected = {
        0: (32, 64, 2, 2),
        19: (32, 64, 2, 2),
        20: (64, 64, 4, 4),  # multi-head stays multi-head: kv_heads follows heads
        45: (64, 128, 4, 4),
        100: (64, 128, 4, 4),
    }
    for step, (hidden, ffn, heads, kv_heads) in expected.items():
        arch = spec.arch_at(step)
        assert isinstance(arch, FamilyModelSpec)
        assert (arch.hidden, arch.ffn, arch.heads, arch.kv_heads) == (hidden, ffn, heads, kv_heads)
        assert arch.head_dim == 16 and arch.vocab_size == 64
    assert spec.arch_at(60).layers == 4 and spec.arch_at(59).layers == 2
    assert spec.model.hidden == 32, "arch_at must not change the spec"


def test_grouped_kv_heads_carry_over() -> None:
    data = mutated(lambda d: (model(d).update(family="llama", kv_heads=1),
                              stages(d)[0].update(heads=4)))
    arch = parse_spec(data).arch_at(20)
    assert (arch.heads, arch.kv_heads) == (4, 1)


def test_stage_index_and_stage_archs() -> None:
    spec = parse_spec(base())
    assert [spec.stage_index_at(s) for s in (0, 19, 20, 39, 40, 60, 99)] == [0, 0, 1, 1, 2, 3, 3]
    archs = spec.stage_archs()
    assert [step for step, _ in archs] == [0, 20, 40, 60]
    assert archs[0][1] == spec.model
    assert [a.layers for _, a in archs] == [2, 2, 2, 4]


def test_custom_arch_is_the_sizes_named_so_far() -> None:
    spec = parse_spec(custom_base())
    assert spec.arch_at(0) == {}
    assert spec.arch_at(25) == {"hidden": 8}
    assert spec.stage_archs() == [(0, {}), (20, {"hidden": 8}), (40, {"hidden": 16})]


def test_no_growth_section_means_no_stages() -> None:
    data = base()
    del data["growth"]
    spec = parse_spec(data)
    assert spec.growth.stages == [] and spec.stage_archs() == [(0, spec.model)]


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
@pytest.mark.parametrize("make", [base, custom_base], ids=["family", "custom"])
def test_round_trip(tmp_path: Path, suffix: str, make: Callable[[], dict]) -> None:
    spec = parse_spec(make())
    path = tmp_path / f"spec{suffix}"
    spec.dump(path)
    assert load_spec(path) == spec
    assert load_spec(path).to_dict() == spec.to_dict()


def test_dump_writes_only_named_stage_sizes(tmp_path: Path) -> None:
    spec = parse_spec(base())
    assert spec.to_dict()["growth"]["stages"][1] == {"step": 40, "ffn": 128}
    spec.dump(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["name"] == "t"
    with pytest.raises(SpecError, match=r"\.yaml, \.yml or \.json"):
        spec.dump(tmp_path / "s.txt")


def test_yaml_exponent_floats_are_floats(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\nmodel: {family: gpt2, vocab_size: 8, max_seq_len: 8, hidden: 8, heads: 2,"
        " ffn: 8, layers: 1}\ntrain: {steps: 10, seq_len: 8, lr: 3e-4}\n"
    )
    assert load_spec(path).train.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.yaml", "name: t\nmodel: [unclosed\n", "malformed YAML: line 3"),
        ("bad.json", '{"name": "t",\n  "model": }', "malformed JSON: "),
        ("list.yaml", "- 1\n- 2\n", "top level must be a mapping"),
        ("empty.yaml", "", "top level must be a mapping"),
        ("spec.toml", "name = 't'", "must end in .yaml, .yml or .json"),
    ],
)
def test_load_errors(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError, match=expected) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_load_json_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"name": "t",\n  "model": }')
    with pytest.raises(SpecError, match="line 2, column"):
        load_spec(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.yaml")


def test_bundled_specs_exist() -> None:
    names = {path.stem for path in BUNDLED}
    assert {"gpt-tiny", "bert-tiny", "llama-tiny", "bert-base", "bert-large"} <= names


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_spec_validates_and_grows_every_dimension(path: Path) -> None:
    spec = load_spec(path)
    first, last = spec.stage_archs()[0][1], spec.stage_archs()[-1][1]
    for key in ("hidden", "ffn", "heads", "layers"):
        assert getattr(last, key) > getattr(first, key), key
    assert last.head_dim == first.head_dim


def test_bundled_bert_plans_match_the_paper() -> None:
    plan = [(a.layers, a.hidden, a.ffn, a.heads)
            for _, a in load_spec(SPECS_DIR / "bert-base.yaml").stage_archs()]
    assert plan == [(3, 512, 768, 8), (3, 512, 3072, 8), (6, 512, 3072, 8),
                    (6, 768, 3072, 8), (6, 768, 3072, 12), (12, 768, 3072, 12)]
    plan = [(a.layers, a.hidden, a.ffn, a.heads)
            for _, a in load_spec(SPECS_DIR / "bert-large.yaml").stage_archs()]
    assert plan == [(6, 512, 1024, 8), (6, 512, 4096, 8), (12, 512, 4096, 8),
                    (12, 1024, 4096, 8), (12, 1024, 4096, 16), (24, 1024, 4096, 16)]


def test_llama_tiny_grows_kv_heads() -> None:
    archs = load_spec(SPECS_DIR / "llama-tiny.yaml").stage_archs()
    assert archs[0][1].kv_heads < archs[-1][1].kv_heads


def test_json_schema() -> None:
    schema = spec_json_schema()
    assert isinstance(schema, dict)
    assert {"name", "model", "growth", "train"} <= set(schema["properties"])
    assert schema["required"] == ["name", "model", "train"]
    json.dumps(schema)


# --- custom models ------------------------------------------------------------------------

FACTORY_MODULE = '''
import torch.nn as nn

def make_model(width=4):
    return nn.Linear(width, width)

def not_a_model():
    return 42

class Factories:
    @staticmethod
    def make(width=2):
        return nn.Linear(width, 1)
'''


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an importable module holding model factories."""
    (tmp_path / "msgc_test_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "msgc_test_factories"


def custom(module: str, **kwargs: Any) -> CustomModelSpec:
    return CustomModelSpec(module=module, kwargs=kwargs, trust_code=True)


@pytest.mark.parametrize("trust", [{}, {"trust_code": False}], ids=["unset", "false"])
def test_custom_model_needs_trust(trust: dict[str, bool]) -> None:
    data = custom_base()
    del data["model"]["trust_code"]
    data["model"].update(trust)
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="untrusted.yaml")
    assert str(info.value).startswith("untrusted.yaml: model.trust_code: loading 'pkg.mod:")


def test_custom_model_loads(factory_module: str) -> None:
    model = load_custom_model(custom(f"{factory_module}:make_model", width=3))
    assert isinstance(model, nn.Linear) and model.in_features == 3
    nested = load_custom_model(custom(f"{factory_module}:Factories.make"))
    assert isinstance(nested, nn.Linear) and nested.in_features == 2


def test_custom_model_from_a_spec_file(factory_module: str) -> None:
    data = custom_base()
    data["model"] = {"module": f"{factory_module}:make_model", "kwargs": {"width": 5},
                     "trust_code": True}
    spec = parse_spec(data)
    assert isinstance(spec, Spec) and isinstance(spec.model, CustomModelSpec)
    assert load_custom_model(spec.model).out_features == 5


@pytest.mark.parametrize(
    ("target", "kwargs", "expected"),
    [
        ("msgc_no_such_module:make", {}, "model.module: cannot import"),
        ("{m}:absent", {}, "model.module: .* has no attribute"),
        ("{m}:not_a_model", {}, "model.module: .* returned a int"),
        ("{m}:make_model", {"depth": 2}, "model.kwargs"),
    ],
    ids=["import", "attribute", "not a module", "kwargs"],
)
def test_custom_model_errors(
    factory_module: str, target: str, kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SpecError, match=expected):
        load_custom_model(custom(target.format(m=factory_module), **kwargs))
