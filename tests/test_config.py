from dataclasses import asdict

import pytest
from conftest import ROOT, model_size
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from llmprep.model.config import GPTConfig
from llmprep.model.init import model_config_from


def test_named_sizes_match_gpt2() -> None:
    medium = model_size("gpt2-medium")
    assert (medium.emb_dim, medium.n_layers, medium.n_heads) == (1024, 24, 16)
    assert (medium.context_length, medium.vocab_size) == (1024, 50257)
    xl = model_size("gpt2-xl")
    assert (xl.emb_dim, xl.n_layers, xl.n_heads, xl.head_dim) == (1600, 48, 25, 64)
    tiny = model_size("gpt2-tiny")
    assert (tiny.emb_dim, tiny.n_layers, tiny.n_heads, tiny.context_length) == (64, 2, 2, 128)
    assert {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")} >= {
        "gpt2-small",
        "gpt2-large",
        "gpt2-mini",
    }


def _model(*overrides: str) -> GPTConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return model_config_from(compose("train", overrides=list(overrides)).model)


def test_overrides_apply_on_top_of_the_size() -> None:
    config = model_size("gpt2-mini", dropout=0.1, context_length=64, tie_weights=True)
    assert (config.emb_dim, config.dropout, config.context_length) == (128, 0.1, 64)
    assert config.tie_weights
    typed = _model("model=gpt2-small", "model.n_layers=3", "model.dropout=0.1")
    assert (typed.emb_dim, typed.n_layers, typed.dropout) == (768, 3, 0.1)


def test_unknown_size_lists_the_known_ones() -> None:
    with pytest.raises(MissingConfigException, match=r"(?s)gpt2-huge.*gpt2-small.*gpt2-xl"):
        _model("model=gpt2-huge")


def test_unknown_field_is_named() -> None:
    with pytest.raises(ValueError, match="drop_rate"):
        model_config_from({**asdict(model_size("gpt2-tiny")), "drop_rate": 0.1})
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig.from_dict({"n_embd": 64})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"emb_dim": 100, "n_heads": 3}, r"emb_dim \(100\).*n_heads \(3\)"),
        ({"n_layers": 0}, "n_layers"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"qkv_bias": "yes"}, "qkv_bias"),
    ],
)
def test_invalid_values_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)


def test_asdict_round_trips() -> None:
    config = model_size("gpt2-tiny", qkv_bias=True, dropout=0.2)
    assert GPTConfig.from_dict(asdict(config)) == config


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_help_says_what_the_command_does_with_its_options_and_examples(cli, script) -> None:
    result = cli(script, "--help")
    assert result.code == 0
    assert "powered by Hydra" not in result.out
    assert result.out.startswith(f"python {script} ")
    assert result.out.count(f"  python {script} ") == 5  # five example commands
    assert f'eval "$(python {script} -sc install=bash)"' in result.out
    if script == "train.py":
        stages = sorted(p.stem for p in (ROOT / "conf" / "stage").glob("*.yaml"))
        assert f"stage: {', '.join(stages)}" in result.out
    else:
        assert "ckpt_path" in result.out and "eval.judge" in result.out
