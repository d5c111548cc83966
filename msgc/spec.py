"""Spec files: the pydantic models of what a user writes, loading, validation, JSON Schema.

A spec (YAML or JSON) names a model (a reference family, or a user's own factory), a
growth schedule and a training run::

    name: gpt-tiny
    model: {family: gpt2, vocab_size: 4096, max_seq_len: 128, hidden: 128, heads: 2,
            head_dim: 64, ffn: 256, layers: 2}
    growth: {ramp_steps: 100, stages: [{step: 300, hidden: 256, heads: 4}]}
    train: {steps: 2000}

Every error a user can make comes out of `load_spec` / `parse_spec` as a `SpecError`
whose message names the field path (``growth.stages[1].hidden``) and says what to change;
pydantic's `ValidationError` never escapes. Types are strict: ``"3"`` or ``true`` is not
an int. Defaults that depend on the family (``kv_heads``, ``head_dim``, ``tie_embeddings``,
``norm_eps``, ``activation``, ``type_vocab_size``) are resolved after validation, so on a
validated `FamilyModelSpec` they always hold concrete values.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
import reprlib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError
from torch import nn

from msgc.errors import SpecError

__all__ = [
    "SIZE_KEYS",
    "CustomModelSpec",
    "HFModelSpec",
    "FamilyModelSpec",
    "GrowthSpec",
    "ModelSpec",
    "Spec",
    "Stage",
    "TrainSpec",
    "import_factory",
    "load_custom_model",
    "load_spec",
    "parse_growth",
    "parse_spec",
    "spec_json_schema",
]

SIZE_KEYS = ("hidden", "ffn", "heads", "kv_heads", "layers")
"""The sizes a growth stage may name (head_dim is fixed under growth)."""

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
Family = Literal["gpt2", "bert", "llama"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
_TORCH_DTYPE_NAMES = {"fp32": ("float32", "float"), "bf16": ("bfloat16",),
                      "fp16": ("float16", "half")}
DTYPE_SPELLINGS = {
    spelling: short
    for short, names in _TORCH_DTYPE_NAMES.items()
    for spelling in (short, *names, *(f"torch.{name}" for name in names))
}
"""Every spelling `train.dtype` accepts (msgc's, torch's, `torch.`-prefixed), to the one the
loaded spec holds."""

_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"tie_embeddings": True, "norm_eps": 1e-5, "activation": "gelu"},
    "bert": {"tie_embeddings": True, "norm_eps": 1e-12, "activation": "gelu", "type_vocab_size": 2},
    "llama": {"tie_embeddings": False, "norm_eps": 1e-5, "activation": "silu"},
}
_FAMILY_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "gpt2": ("gelu", "gelu_tanh", "relu"),
    "bert": ("gelu", "gelu_tanh", "relu"),
    "llama": ("silu",),
}
_MODULE_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _rule_error(message: str, field: str = "") -> PydanticCustomError:
    """A validation error raised by a cross-field rule.

    `field` is the path of the offending field relative to the model whose validator
    raises it; `parse_spec` appends it to pydantic's location.
    """
    return PydanticCustomError("spec_rule", "{message}", {"message": message, "field": field})


class _StrictModel(BaseModel):
    """Base of every spec model: unknown keys are errors, types are not coerced, and floats
    are finite (YAML's ``.inf`` / ``.nan`` and JSON's ``Infinity`` / ``NaN`` are errors)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class FamilyModelSpec(_StrictModel):
    """A reference Transformer family (msgc.models builds it) with its starting sizes."""

    family: Family = Field(description="Reference family: gpt2, bert or llama.")
    vocab_size: PosInt = Field(description="Vocabulary size.")
    max_seq_len: PosInt = Field(description="Longest sequence the model accepts.")
    hidden: PosInt = Field(description="Width of the residual stream (d_model).")
    heads: PosInt = Field(description="Number of query heads.")
    kv_heads: PosInt | None = Field(
        None, description="Number of key/value heads (GQA/MQA); default: heads."
    )
    head_dim: PosInt | None = Field(
        None, description="Width of one head, fixed under growth; default: hidden // heads."
    )
    ffn: PosInt = Field(description="Width of the feed-forward layer.")
    layers: PosInt = Field(description="Number of Transformer blocks.")
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="Dropout rate.")
    tie_embeddings: bool | None = Field(
        None, description="Tie the output head to the token embedding; default per family."
    )
    norm_eps: PosFloat | None = Field(
        None, description="Epsilon of the norms; default 1e-5 (bert: 1e-12)."
    )
    activation: Activation | None = Field(
        None, description="FFN activation: gelu, gelu_tanh or relu (llama: silu, SwiGLU)."
    )
    type_vocab_size: PosInt | None = Field(
        None, description="Number of token types (bert only); default 2."
    )

    @model_validator(mode="after")
    def _check_and_resolve(self) -> Self:
        """Check the family-specific options, then fill in the family defaults."""
        self._check_family_options()
        self._resolve_defaults()
        self._check_heads()
        return self

    def _check_family_options(self) -> None:
        """Reject options that the chosen family does not have."""
        allowed = _FAMILY_ACTIVATIONS[self.family]
        if self.activation is not None and self.activation not in allowed:
            raise _rule_error(
                f"{self.family} does not support activation {self.activation!r}; "
                f"use {' or '.join(repr(a) for a in allowed)}, or remove it",
                "activation",
            )
        if self.type_vocab_size is not None and self.family != "bert":
            raise _rule_error(
                f"type_vocab_size is for bert only, not {self.family}; remove it",
                "type_vocab_size",
            )
        if self.family != "llama" and self.kv_heads not in (None, self.heads):
            raise _rule_error(
                f"{self.family} has one key/value head per query head, so kv_heads "
                f"({self.kv_heads}) must equal heads ({self.heads}); remove kv_heads, or use "
                "family llama for grouped-query attention",
                "kv_heads",
            )
        if self.head_dim is None and self.hidden % self.heads:
            raise _rule_error(
                f"hidden ({self.hidden}) is not a multiple of heads ({self.heads}), so "
                "head_dim cannot default to hidden // heads; set head_dim, or change hidden "
                "or heads",
                "head_dim",
            )

    def _resolve_defaults(self) -> None:
        """Replace every None default by its concrete, family-dependent value."""
        if self.kv_heads is None:
            self.kv_heads = self.heads
        if self.head_dim is None:
            self.head_dim = self.hidden // self.heads
        for key, value in _FAMILY_DEFAULTS[self.family].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    def _check_heads(self) -> None:
        """kv_heads divides heads; RoPE (llama) needs an even head_dim."""
        if self.heads % self.kv_heads:
            raise _rule_error(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}); "
                "set kv_heads to a divisor of heads",
                "kv_heads",
            )
        if self.family == "llama" and self.head_dim % 2:
            raise _rule_error(
                f"head_dim ({self.head_dim}) must be even for llama (RoPE rotates pairs of "
                "channels); set an even head_dim",
                "head_dim",
            )

    def sizes(self) -> dict[str, int]:
        """The growable sizes, keyed as in `SIZE_KEYS`."""
        return {key: getattr(self, key) for key in SIZE_KEYS}


class CustomModelSpec(_StrictModel):
    """A user's own model, made by calling ``factory(**kwargs)`` from ``package.module``.

    msgc trains it when it maps token ids (B, T) to logits (B, T, V); its vocabulary V is
    read off one forward pass.
    """

    module: str = Field(
        description="Where the factory lives: 'package.module:factory', importable from the "
        "current directory or PYTHONPATH."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory."
    )
    trust_code: bool = Field(
        False, description="Must be true: loading the model imports and runs the user's code."
    )
    task: Literal["causal", "masked"] = Field(
        "causal", description="causal: next-token prediction; masked: BERT-style masked LM."
    )

    @model_validator(mode="after")
    def _check_trusted(self) -> Self:
        """Training, validating and inspecting alike refuse code the user did not trust."""
        if not self.trust_code:
            raise _rule_error(
                f"loading {self.module!r} imports and runs its code; set "
                "model.trust_code: true if you trust it",
                "trust_code",
            )
        return self

    @field_validator("module")
    @classmethod
    def _check_module(cls, value: str) -> str:
        """Require the 'package.module:factory' form."""
        if not _MODULE_PATTERN.match(value):
            raise _rule_error(
                f"{value!r} is not of the form 'package.module:factory'; "
                "write the module path, a colon, then the factory's name"
            )
        return value


class HFModelSpec(_StrictModel):
    """A Hugging Face model: a config built locally from `config`, or a saved model's folder.

    `hf` is a transformers model type (gpt2, llama, bert, mistral, ...) whose config is built
    from `config` (nothing is downloaded), or the path of a folder written by
    save_pretrained. The run grows it on the schedule and exports it with save_pretrained.
    """

    hf: Annotated[str, Field(min_length=1)] = Field(
        description="A transformers model type (e.g. 'gpt2', 'llama') or a local model folder."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Config fields for a model type (ignored for a folder)."
    )
    task: Literal["causal", "masked"] = Field(
        "causal", description="causal: next-token LM head; masked: an MLM head (BERT-like)."
    )


_MODEL_KEYS = {"family": "family", "module": "custom", "hf": "hf"}


def _model_kind(data: Any) -> str | None:
    """The tag of the model variant `data` describes (None: not exactly one fits)."""
    for cls, tag in ((FamilyModelSpec, "family"), (CustomModelSpec, "custom"),
                     (HFModelSpec, "hf")):
        if isinstance(data, cls):
            return tag
    if not isinstance(data, dict):
        return None
    tags = [tag for key, tag in _MODEL_KEYS.items() if key in data]
    return tags[0] if len(tags) == 1 else None


ModelSpec = Annotated[
    Annotated[FamilyModelSpec, Tag("family")] | Annotated[CustomModelSpec, Tag("custom")]
    | Annotated[HFModelSpec, Tag("hf")],
    Discriminator(
        _model_kind,
        custom_error_type="model_kind",
        custom_error_message=(
            "needs exactly one of `family` (gpt2, bert or llama) for a reference model, "
            "`hf` (a transformers model type or a saved model folder) for a Hugging Face "
            "model, or `module` ('package.module:factory') for your own model"
        ),
    ),
]
"""The `model` section: one of the variants, told apart by which key it has."""
_MODEL_TAGS = ("family", "custom", "hf")


class Stage(_StrictModel):
    """One growth event: at `step`, grow the named sizes to the given values."""

    step: Annotated[int, Field(ge=1)] = Field(description="Training step of the growth event.")
    hidden: PosInt | None = Field(None, description="New residual-stream width.")
    ffn: PosInt | None = Field(None, description="New feed-forward width.")
    heads: PosInt | None = Field(None, description="New number of query heads.")
    kv_heads: PosInt | None = Field(None, description="New number of key/value heads.")
    layers: PosInt | None = Field(None, description="New number of blocks.")
    lr_scale: PosFloat | None = Field(
        None, description="Learning-rate multiplier from this growth on (unset: keep the "
        "previous one); it moves there with the masks over the ramp."
    )
    lr_restart: PosFloat | None = Field(
        None, description="Restart the learning-rate decay at this growth: from this "
        "fraction of train.lr at the stage's step down to the run's final rate, with the "
        "run's schedule shape (the official MSG code restarts at the peak, 1.0, at its first "
        "two growth events); the rate moves there with the masks over the ramp."
    )

    @model_validator(mode="before")
    @classmethod
    def _reject_head_dim(cls, data: Any) -> Any:
        """Explain why head_dim cannot grow (a plainer message than 'unknown key')."""
        if isinstance(data, dict) and "head_dim" in data:
            raise _rule_error(
                "head_dim is fixed under growth (attention grows by adding heads); "
                "remove it and grow heads instead",
                "head_dim",
            )
        return data

    @model_validator(mode="after")
    def _names_a_size(self) -> Self:
        """A stage that grows nothing is a mistake."""
        if not self.sizes():
            raise _rule_error(f"a stage must name at least one of {', '.join(SIZE_KEYS)}")
        return self

    @model_serializer(mode="wrap")
    def _named_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump only the step and the sizes the stage names."""
        return {key: value for key, value in handler(self).items() if value is not None}

    def sizes(self) -> dict[str, int]:
        """The sizes this stage names, keyed as in `SIZE_KEYS`."""
        return {key: getattr(self, key) for key in SIZE_KEYS if getattr(self, key) is not None}


class GrowthSpec(_StrictModel):
    """The growth schedule: stages, and how new weights and blocks come in."""

    ramp_steps: Annotated[int, Field(ge=1)] = Field(
        100, description="Steps over which a new part's mask rises from 0 to 1."
    )
    init: Literal["normal", "match", "zeros", "copy"] = Field(
        "normal", description="New matrix entries: normal draws N(0, init_std); match draws "
        "N(0, s) with s the standard deviation of the matrix's existing entries (so a "
        "residual projection's scaled init carries over); zeros; copy repeats old entries. "
        "New vector entries start as in a fresh layer (norm scales 1, biases 0), except "
        "under copy."
    )
    init_std: PosFloat = Field(0.02, description="Standard deviation of `normal` init.")
    depth_placement: Literal["stack", "interleave"] = Field(
        "stack", description="Where new blocks go: on top, or each after its source."
    )
    fuse: bool = Field(
        True, description="Run ramps through msgc.fuse: mask-scaled linears and masked norms "
        "as msgc.kernels' fused ops (false: the masks as separate multiplies)."
    )
    lr_scale: PosFloat = Field(
        1.0, description="Learning-rate multiplier of the starting model (times train.lr "
        "and its schedule); stages may change it."
    )
    stages: list[Stage] = Field(default_factory=list, description="Growth events, in order.")

    @model_validator(mode="after")
    def _check_stage_spacing(self) -> Self:
        """Stage steps increase, and each ramp ends before the next growth event."""
        for i in range(1, len(self.stages)):
            previous, step = self.stages[i - 1].step, self.stages[i].step
            if step <= previous:
                raise _rule_error(
                    f"step {step} is not after the previous stage's step {previous}; "
                    "list stages in strictly increasing step order",
                    f"stages[{i}].step",
                )
            if step - previous < self.ramp_steps:
                raise _rule_error(
                    f"step {step} is only {step - previous} steps after the previous stage "
                    f"(step {previous}), but its ramp takes ramp_steps={self.ramp_steps}; "
                    f"move this stage to step {previous + self.ramp_steps} or later, "
                    "or lower ramp_steps",
                    f"stages[{i}].step",
                )
        return self

    def lr_restarts(self) -> list[tuple[int, float] | None]:
        """The restart ``(step, fraction of train.lr)`` in force after 0, 1, ... growth
        events: the latest stage's with `lr_restart` so far (None: no restart yet)."""
        return _carried(None, [None if stage.lr_restart is None
                               else (stage.step, stage.lr_restart) for stage in self.stages])

    def lr_scales(self) -> list[float]:
        """The learning-rate multiplier in force after 0, 1, ... growth events."""
        return _carried(self.lr_scale, [stage.lr_scale for stage in self.stages])


def _carried(initial: Any, changes: list[Any]) -> list[Any]:
    """`initial`, then after each change the value in force: the change, or (None) the
    previous value carried over."""
    values = [initial]
    for change in changes:
        values.append(values[-1] if change is None else change)
    return values


class TrainSpec(_StrictModel):
    """The training run; every field but `steps` has a default."""

    steps: PosInt = Field(description="Total optimizer steps of the run, growth included.")
    batch_size: PosInt = Field(16, description="Sequences per micro-batch.")
    seq_len: PosInt = Field(128, description="Tokens per training sequence.")
    lr: PosFloat = Field(1e-3, description="Peak learning rate.")
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="Final learning rate as a fraction of `lr`."
    )
    warmup_steps: Annotated[int, Field(ge=0)] = Field(0, description="Linear warmup steps.")
    schedule: Literal["cosine", "linear", "constant", "wsd"] = Field(
        "cosine", description="Learning-rate decay after warmup, over the whole run; wsd "
        "(warmup-stable-decay) holds the peak and decays linearly over the last "
        "`decay_fraction` of the run."
    )
    decay_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.2, description="The share of the run over which `wsd` decays (other schedules "
        "ignore it)."
    )
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.01, description="AdamW weight decay.")
    grad_clip: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Gradient-norm clip (0: off)."
    )
    grad_accum_steps: Annotated[int, Field(ge=1)] = Field(
        1, description="Micro-batches per optimizer step."
    )
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(
        0, description="Random seed (below 2**63: torch's generators take 64 bits)."
    )
    eval_every: PosInt = Field(100, description="Steps between evaluations.")
    eval_batches: PosInt = Field(8, description="Batches per evaluation.")
    checkpoint_every: PosInt | None = Field(
        None, description="Steps between checkpoints (none: only at the end)."
    )
    keep_checkpoints: Annotated[int, Field(ge=1)] = Field(
        3, description="How many recent checkpoints to keep."
    )
    data: Annotated[str, Field(min_length=1)] = Field(
        "shakespeare", description="'shakespeare' (built in), or a path to a text file/folder."
    )
    tokenizer: Literal["bpe", "byte"] = Field(
        "bpe", description="A BPE tokenizer trained locally, or raw bytes."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    dtype: Annotated[
        Literal["fp32", "bf16", "fp16"], WithJsonSchema({"enum": sorted(DTYPE_SPELLINGS)})
    ] = Field("fp32", description="Compute dtype: fp32, bf16 or fp16; torch's names "
              "(float32, bfloat16, float16, torch.float32, ...) mean the same and load as "
              "the short form.")
    fused_head: bool = Field(
        True, description="Training steps run the LM head and the loss as one chunked op "
        "(msgc.train.linear_cross_entropy: no (N, V) logits) where the model ends in a "
        "linear layer (false: logits, then the cross-entropy)."
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _normalise_dtype(cls, value: Any) -> Any:
        """torch's dtype names (float32, torch.bfloat16, ...) to fp32 / bf16 / fp16."""
        if isinstance(value, str) and value in DTYPE_SPELLINGS:
            return DTYPE_SPELLINGS[value]
        if isinstance(value, str):
            raise _rule_error(
                f"{value!r} is not a dtype msgc trains in; write one of "
                f"{', '.join(sorted(DTYPE_SPELLINGS))}"
            )
        return value

    @model_validator(mode="after")
    def _check_warmup(self) -> Self:
        """Warmup must end before the run does."""
        if self.warmup_steps >= self.steps:
            raise _rule_error(
                f"warmup_steps ({self.warmup_steps}) must be less than steps ({self.steps}); "
                "lower warmup_steps",
                "warmup_steps",
            )
        if self.schedule == "wsd" and self.steps - self.decay_steps() < self.warmup_steps:
            raise _rule_error(
                f"the wsd decay (the last {self.decay_steps()} of {self.steps} steps) starts "
                f"before warmup_steps ({self.warmup_steps}) ends; lower decay_fraction "
                "or warmup_steps",
                "decay_fraction",
            )
        return self

    def decay_steps(self) -> int:
        """How many of the run's last steps the `wsd` schedule decays over (at least 1)."""
        return max(1, round(self.decay_fraction * self.steps))


def _apply_stage(sizes: dict[str, int], stage: Stage) -> dict[str, int]:
    """The sizes in force after `stage`, given those in force before it.

    Named sizes replace the old ones; others carry over, except that a multi-head
    (kv_heads == heads) model stays multi-head when a stage grows heads alone.
    """
    named = stage.sizes()
    after = sizes | named
    was_mha = "heads" in sizes and sizes.get("kv_heads") == sizes["heads"]
    if was_mha and "heads" in named and "kv_heads" not in named:
        after["kv_heads"] = named["heads"]
    return after


class Spec(_StrictModel):
    """A whole spec file: model, growth schedule, training run."""

    name: Annotated[str, Field(min_length=1)] = Field(description="Name of the run.")
    model: ModelSpec = Field(description="The model at step 0.")
    growth: GrowthSpec = Field(default_factory=GrowthSpec, description="The growth schedule.")
    train: TrainSpec = Field(description="The training run.")

    @model_validator(mode="after")
    def _check_cross_sections(self) -> Self:
        """Rules that tie the model, growth and train sections together."""
        self._check_schedule_fits_run()
        self._check_stage_sizes()
        self._check_attention_form()
        if isinstance(self.model, FamilyModelSpec) and self.train.seq_len > self.model.max_seq_len:
            raise _rule_error(
                f"seq_len ({self.train.seq_len}) is longer than model.max_seq_len "
                f"({self.model.max_seq_len}); lower seq_len or raise max_seq_len",
                "train.seq_len",
            )
        return self

    def _check_schedule_fits_run(self) -> None:
        """Every stage happens during the run and its ramp finishes before the end."""
        steps, ramp = self.train.steps, self.growth.ramp_steps
        for i, stage in enumerate(self.growth.stages):
            if stage.step >= steps:
                raise _rule_error(
                    f"step {stage.step} is not before the end of training (train.steps = "
                    f"{steps}); move the stage earlier or raise train.steps",
                    f"growth.stages[{i}].step",
                )
        if self.growth.stages and self.growth.stages[-1].step + ramp > steps:
            last = len(self.growth.stages) - 1
            raise _rule_error(
                f"the ramp of the last stage (step {self.growth.stages[-1].step} + ramp_steps "
                f"{ramp}) ends after train.steps ({steps}); move the stage to step "
                f"{steps - ramp} or earlier, lower growth.ramp_steps or raise train.steps",
                f"growth.stages[{last}].step",
            )

    def _check_stage_sizes(self) -> None:
        """Each named size grows, and heads stay a multiple of kv_heads at every stage."""
        sizes = self._initial_sizes()
        for i, stage in enumerate(self.growth.stages):
            for key, value in stage.sizes().items():
                before = sizes.get(key)
                if before is not None and value <= before:
                    raise _rule_error(
                        f"{key} {value} does not grow the {key} in force before this stage "
                        f"({before}); set it above {before} or remove it",
                        f"growth.stages[{i}].{key}",
                    )
            sizes = _apply_stage(sizes, stage)
            heads, kv_heads = sizes.get("heads"), sizes.get("kv_heads")
            if heads is not None and kv_heads is not None and heads % kv_heads:
                field = "kv_heads" if "kv_heads" in stage.sizes() else "heads"
                raise _rule_error(
                    f"from this stage heads ({heads}) is not a multiple of kv_heads "
                    f"({kv_heads}); choose heads and kv_heads so that kv_heads divides heads",
                    f"growth.stages[{i}].{field}",
                )

    def _check_attention_form(self) -> None:
        """Stages keep the attention's form, as msgc.grow does (checked after the sizes).

        One key/value head per query head (gpt2 and bert always) stays so; a single shared
        key/value head (MQA) gets no more; grouped heads never lose query heads per group.
        """
        if not isinstance(self.model, FamilyModelSpec):
            return  # a custom model's attention is not known before tracing
        one_per_query = self.model.family != "llama"
        sizes = self._initial_sizes()
        for i, stage in enumerate(self.growth.stages):
            after = _apply_stage(sizes, stage)
            named = stage.sizes()
            heads, kv_heads = sizes["heads"], sizes["kv_heads"]
            field = f"growth.stages[{i}].kv_heads"
            if one_per_query or kv_heads == heads:
                if "kv_heads" in named and after["kv_heads"] != after["heads"]:
                    raise _rule_error(
                        f"the attention has one key/value head per query head, and growth "
                        f"keeps it so: set kv_heads to heads ({after['heads']}) or remove it",
                        field,
                    )
            elif kv_heads == 1:
                if "kv_heads" in named:
                    raise _rule_error(
                        f"the {heads} query heads share one key/value head (MQA), and msgc "
                        "cannot add key/value heads to it; remove kv_heads, or start the "
                        "model with kv_heads above 1",
                        field,
                    )
            elif after["heads"] // after["kv_heads"] < heads // kv_heads:
                raise _rule_error(
                    f"{after['heads']} heads over {after['kv_heads']} kv_heads would shrink the "
                    f"{heads // kv_heads} query heads per key/value head; grow heads to at "
                    f"least {after['kv_heads'] * (heads // kv_heads)}",
                    f"growth.stages[{i}].heads" if "heads" in named else field,
                )
            sizes = after

    def _initial_sizes(self) -> dict[str, int]:
        """The sizes at step 0 where known (a custom model's are not)."""
        return self.model.sizes() if isinstance(self.model, FamilyModelSpec) else {}

    def _sizes_at(self, step: int) -> dict[str, int]:
        """The sizes in force at `step`: every stage with stage.step <= step applied."""
        sizes = self._initial_sizes()
        for stage in self.growth.stages:
            if stage.step <= step:
                sizes = _apply_stage(sizes, stage)
        return sizes

    def arch_at(self, step: int) -> FamilyModelSpec | dict[str, int]:
        """The architecture in force at `step` (stages at or before `step` applied).

        For a family model: a `FamilyModelSpec` copy with the grown sizes. For a custom
        model (starting sizes unknown): a dict of the sizes the stages have named so far.
        """
        sizes = self._sizes_at(step)
        if isinstance(self.model, FamilyModelSpec):
            return self.model.model_copy(update=sizes)
        return sizes

    def stage_index_at(self, step: int) -> int:
        """How many growth events have happened by `step` (0: none yet)."""
        return sum(stage.step <= step for stage in self.growth.stages)

    def stage_archs(self) -> list[tuple[int, FamilyModelSpec | dict[str, int]]]:
        """(step, arch) for step 0 and every stage, in order."""
        steps = [0, *(stage.step for stage in self.growth.stages)]
        return [(step, self.arch_at(step)) for step in steps]

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (defaults resolved), ready for YAML or JSON."""
        return self.model_dump(mode="json")

    def dump(self, path: str | Path) -> None:
        """Write the spec to `path`, as JSON for .json and YAML for .yaml/.yml."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        elif path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(data, sort_keys=False)
        else:
            raise SpecError(f"{path}: cannot tell the format; name the file .yaml, .yml or .json")
        path.write_text(text, encoding="utf-8")


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float (YAML 1.1 would give a string)."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file (.yaml/.yml or .json); every problem is a SpecError."""
    path = Path(path)
    return parse_spec(_read_document(path), source=str(path))


def _read_document(path: Path) -> Any:
    """The parsed YAML or JSON document in `path`."""
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise SpecError(f"{path}: a spec file must end in .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the file ({exc})") from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{path}: line {exc.lineno}, column {exc.colno}: malformed JSON: {exc.msg}"
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: malformed YAML: {_describe_yaml_error(exc)}") from None
    except RecursionError:  # both parsers recurse once per level of nesting
        raise SpecError(f"{path}: malformed {kind}: nested too deeply to read") from None


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    """A one-line description of a YAML error, with its line and column where known."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc)


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """Validate already-parsed spec data; `source` prefixes every error message."""
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the top level must be a mapping with keys name, model, growth, train "
            f"(got {type(data).__name__})"
        )
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, source) from None


def parse_growth(data: Any, source: str = "growth") -> GrowthSpec:
    """Validate a growth section on its own (`msgc.Growth` takes one without a spec)."""
    try:
        return GrowthSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, source) from None


def _spec_error(exc: ValidationError, source: str) -> SpecError:
    """One SpecError listing every validation error as `path: what to change`."""
    problems = [_describe_error(error) for error in exc.errors(include_url=False)]
    if len(problems) == 1:
        return SpecError(f"{source}: {problems[0]}")
    listed = "\n".join(f"  {problem}" for problem in problems)
    return SpecError(f"{source}: {len(problems)} problems:\n{listed}")


def _describe_error(error: Any) -> str:
    """`path: message` for one pydantic error dict."""
    ctx = error.get("ctx") or {}
    path = _field_path(error["loc"], ctx.get("field", ""))
    kind = error["type"]
    if kind == "missing":
        message = "missing; add it"
    elif kind == "extra_forbidden":
        message = "unknown key; remove it" + _did_you_mean(str(error["loc"][-1]))
    elif kind in ("spec_rule", "model_kind"):
        message = error["msg"]
    else:
        message = f"{error['msg']} (got {_short_repr(error['input'])})"
    return f"{path}: {message}" if path else message


def _field_path(loc: tuple[str | int, ...], field: str) -> str:
    """Join a pydantic location (plus a rule's relative field) as ``a.b[1].c``."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] == "model" and parts[1] in _MODEL_TAGS:
        del parts[1]  # the union's tag is not a key the user wrote
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    if field:
        path += field if field.startswith("[") else f".{field}"
    return path.lstrip(".")


_ALL_KEYS = sorted(
    {
        key
        for model in (Spec, FamilyModelSpec, CustomModelSpec, HFModelSpec, GrowthSpec, Stage,
                      TrainSpec)
        for key in model.model_fields
    }
)


def _did_you_mean(key: str) -> str:
    """' (did you mean `x`?)' for a misspelt key, or where the key belongs elsewhere."""
    if key in _ALL_KEYS:
        return f" (`{key}` belongs in another section)"
    close = difflib.get_close_matches(key, _ALL_KEYS, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _short_repr(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters.

    Built by a bounded `reprlib.Repr`, so that a huge or alias-expanded ("billion laughs")
    YAML value is never rendered in full.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 8


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the spec file format."""
    schema = Spec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def load_custom_model(spec: CustomModelSpec) -> nn.Module:
    """Import ``package.module:factory`` and return ``factory(**spec.kwargs)``.

    A validated spec has ``trust_code`` true: this runs the user's code.
    """
    factory = import_factory(spec.module)
    try:
        inspect.signature(factory).bind(**spec.kwargs)
    except TypeError as exc:
        raise SpecError(f"model.kwargs: {spec.module} does not accept them ({exc})") from None
    except ValueError:
        pass  # no introspectable signature (some builtins): let the call decide
    model = factory(**spec.kwargs)
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"model.module: {spec.module} returned a {type(model).__name__}, not a "
            "torch.nn.Module; point it at a factory that builds the model"
        )
    return model


def import_factory(target: str, field: str = "model.module") -> Any:
    """The callable named by 'package.module:factory' (the factory may be dotted); errors
    name `field`."""
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise SpecError(f"{field}: expected 'package.module:factory', got {target!r}")
    if str(Path.cwd()) not in sys.path:  # as `python -m` would (the msgc script does not);
        sys.path.append(str(Path.cwd()))  # last, so it shadows no installed package
    try:
        obj: Any = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise SpecError(
            f"{field}: cannot import {module_name!r} ({exc}); check the module path "
            "and that it is on PYTHONPATH"
        ) from None
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise SpecError(
                f"{field}: {module_name!r} has no attribute {attr_path!r}; "
                "check the factory's name"
            )
        obj = getattr(obj, attr)
    if not callable(obj):
        raise SpecError(f"{field}: {target!r} is not callable; name a factory function")
    return obj
