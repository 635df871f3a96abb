"""Where a run's GPT comes from: random init, a Hugging Face folder, or one of our checkpoints."""

from __future__ import annotations

import logging

import pytest
import torch

from llmprep.model.init import build_model
from llmprep.run import train

TINY_MODEL = {
    "name": "gpt2-tiny",
    "vocab_size": 50257,
    "context_length": 128,
    "emb_dim": 64,
    "n_layers": 2,
    "n_heads": 2,
    "dropout": 0.0,
    "qkv_bias": False,
    "tie_weights": False,
}


def test_random_init_follows_the_model_config():
    model = build_model(TINY_MODEL, None)
    assert model.config.emb_dim == 64 and model.config.n_layers == 2


def test_init_from_our_checkpoint_gives_its_weights(compose_run, tmp_path):
    train(compose_run("model=gpt2-tiny", "logger=none", "trainer.max_epochs=1"))
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = build_model({**TINY_MODEL, "dropout": 0.1}, str(ckpt_path))
    assert model.config.dropout == 0.1
    torch.testing.assert_close(model.out_head.weight, ckpt["state_dict"]["model.out_head.weight"])


def test_init_from_hf_folder_uses_the_checkpoint_architecture(tmp_path, caplog):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=50257)
    )
    hf.save_pretrained(tmp_path / "hf")
    with caplog.at_level(logging.WARNING):
        model = build_model(TINY_MODEL, str(tmp_path / "hf"))
    assert model.config.emb_dim == 32 and model.config.qkv_bias
    assert "emb_dim (64 vs 32)" in caplog.text


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken\.ckpt"):
        build_model(TINY_MODEL, str(bad))


def test_unknown_model_key_is_named():
    with pytest.raises(ValueError, match=r"unknown GPTConfig field.*emb_size"):
        build_model({**TINY_MODEL, "emb_size": 64}, None)
