"""Configs that reach loggers and checkpoints are plain and carry no secrets."""

from __future__ import annotations

from omegaconf import OmegaConf

from llmprep.training.config import REDACTED, plain_config, redact, redact_text


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


def test_secret_assignments_in_override_strings_are_redacted():
    text = "judge.api_key=sk-1,model=gpt2-tiny +hf.token='t0k' api_key_env=OPENAI_API_KEY"
    assert redact_text(text, secrets=[]) == (
        f"judge.api_key={REDACTED},model=gpt2-tiny +hf.token={REDACTED} api_key_env=OPENAI_API_KEY"
    )


def test_a_secret_reaches_no_file_of_the_run_or_wandb_folder(cli, tmp_path, monkeypatch):
    """Given as an override and resolved from ``${oc.env:...}``, the key's value is in no file:
    not the .hydra copies, the checkpoints, the log, nor the offline W&B run (its command line)."""
    secret = "fake-secret-4f9c2d71"
    monkeypatch.setenv("FAKE_API_KEY", secret)
    run = tmp_path / "run"
    result = cli(
        "train.py",
        "model=gpt2-tiny",
        "trainer.max_steps=2",
        "logger=wandb",
        f"+judge.api_key={secret}",
        "+notes.source=${oc.env:FAKE_API_KEY}",
        f"+notes.pasted=key-{secret}",
        f"hydra.run.dir={run}",
    )
    assert result.code == 0, result.err[-2000:]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml"} <= {
        str(p.relative_to(run)) for p in files
    }
    leaking = [str(p.relative_to(run)) for p in files if secret.encode() in p.read_bytes()]
    assert leaking == []
    assert REDACTED in (run / ".hydra" / "overrides.yaml").read_text()
