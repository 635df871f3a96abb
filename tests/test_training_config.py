"""Configs that reach loggers and checkpoints are plain and carry no secrets."""

from __future__ import annotations

from omegaconf import OmegaConf

from llmprep.training.config import REDACTED, plain_config, redact


def test_secret_named_keys_are_redacted_but_env_var_names_are_kept():
    data = {"judge": {"api_key": "sk-1", "api_key_env": "OPENAI_API_KEY"}, "max_new_tokens": 5}
    out = redact(data, secrets=[])
    assert out == {
        "judge": {"api_key": REDACTED, "api_key_env": "OPENAI_API_KEY"},
        "max_new_tokens": 5,
    }


def test_values_of_secret_environment_variables_are_redacted_anywhere(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/keep/this/path")
    cfg = OmegaConf.create({"notes": ["pass ${oc.env:HF_TOKEN} on"], "cache": "/keep/this/path"})
    assert plain_config(cfg) == {"notes": [f"pass {REDACTED} on"], "cache": "/keep/this/path"}
