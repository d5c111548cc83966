"""A spec naming a Hugging Face model: trained on its growth schedule, exported at the end."""

import pytest
import torch

from msgc.spec import parse_spec
from msgc.train.data import prepare_data
from msgc.train.trainer import Trainer
from tests.train.test_trainer import assert_preserved, observe_growth

transformers = pytest.importorskip("transformers")


def test_hf_gpt2_spec_grows_trains_and_exports(text_file, cache, tmp_path, monkeypatch):
    spec = parse_spec({
        "name": "hf-gpt2",
        "model": {"hf": "gpt2", "config": {"vocab_size": 260, "n_positions": 32, "n_embd": 16,
                                           "n_layer": 2, "n_head": 2, "bos_token_id": 0,
                                           "eos_token_id": 0}},
        "growth": {"ramp_steps": 2, "stages": [{"step": 3, "hidden": 32, "heads": 4},
                                               {"step": 6, "ffn": 96, "layers": 3}]},
        "train": {"steps": 9, "batch_size": 4, "seq_len": 16, "eval_every": 3,
                  "eval_batches": 2, "tokenizer": "byte", "data": str(text_file)},
    })
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    trainer = Trainer(spec, tokenizer, data, tmp_path / "run", progress=False)
    seen = observe_growth(monkeypatch)
    trainer.run()
    assert_preserved(seen, [3, 6])
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "run" / "hf").eval()
    assert (exported.config.n_embd, exported.config.n_layer) == (32, 3)
    ids = torch.randint(0, 260, (2, 16))
    final = trainer.state.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, final(ids), rtol=1e-5, atol=1e-5)


def test_hf_spec_with_unknown_model_type_is_a_spec_error(text_file, cache):
    from msgc.errors import SpecError
    from msgc.train.models import vocab_size

    spec = parse_spec({"name": "x", "model": {"hf": "no-such-model-type"},
                       "train": {"steps": 4, "data": str(text_file)}})
    with pytest.raises(SpecError, match="model.hf"):
        vocab_size(spec)


def _gpt2_spec(text_file, stages):
    return parse_spec({
        "name": "hf-gpt2",
        "model": {"hf": "gpt2", "config": {"vocab_size": 260, "n_positions": 32, "n_embd": 16,
                                           "n_layer": 2, "n_head": 2, "bos_token_id": 0,
                                           "eos_token_id": 0}},
        "growth": {"ramp_steps": 2, "stages": stages},
        "train": {"steps": 9, "batch_size": 4, "seq_len": 16, "tokenizer": "byte",
                  "data": str(text_file)},
    })


def test_compare_trains_an_hf_model_of_the_final_size_from_scratch(text_file):
    from msgc.train.compare import scratch_spec
    from msgc.train.models import make_model

    spec = _gpt2_spec(text_file, [{"step": 3, "hidden": 32, "heads": 4},
                                  {"step": 6, "layers": 3}])
    scratch = scratch_spec(spec)
    assert not scratch.growth.stages
    config = make_model(scratch).hf.config
    # the FFN was not grown: it keeps the start's 4 x 16, not 4 x the final width
    assert (config.n_embd, config.n_head, config.n_layer, config.n_inner) == (32, 4, 3, 64)
    assert config.vocab_size == 260 and config.n_positions == 32


def test_a_final_size_the_hf_config_cannot_describe_is_refused_before_training(
        text_file, cache, tmp_path):
    from msgc.errors import SpecError

    spec = _gpt2_spec(text_file, [{"step": 3, "hidden": 32}])  # heads of 8, not 32 / 2
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    with pytest.raises(SpecError, match=r"growth.stages: the config of 'gpt2' cannot describe"
                                        r" the model grown to \{'hidden': 32\}"):
        Trainer(spec, tokenizer, data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
