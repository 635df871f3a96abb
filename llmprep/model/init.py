"""Where a stage's GPT comes from: random initialisation, pretrained GPT-2, or one of our runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from llmprep.model import GPT, GPTConfig

log = logging.getLogger(__name__)

ARCH_KEYS = ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads")


def model_config_from(model_cfg: Mapping[str, Any]) -> GPTConfig:
    """A ``GPTConfig`` from the ``model`` config group (its ``name`` is only a label)."""
    return GPTConfig(**{k: v for k, v in model_cfg.items() if k != "name"})


def checkpoint_state_dict(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The GPT's own weights in a task checkpoint (the tasks keep the model at ``self.model``)."""
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path}: checkpoint holds no `model.*` weights")
    return state


def load_checkpoint_model(path: str | Path, dropout: float | None = None) -> GPT:
    """Our GPT with the weights of one of our Lightning checkpoints (any stage).

    Read with ``torch.load(weights_only=True)``: tensors and plain config only, no pickled code.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ValueError(
            f"init_from={str(path)!r}: not a readable llmprep checkpoint ({err})"
        ) from err
    hparams = ckpt.get("hyper_parameters", {})
    if "model_config" not in hparams:
        raise ValueError(
            f"init_from={str(path)!r}: checkpoint has no `model_config` hyperparameters"
        )
    model_config = dict(hparams["model_config"])
    if dropout is not None:
        model_config["dropout"] = dropout
    state = checkpoint_state_dict(ckpt, path)
    model = GPT(GPTConfig(**model_config))
    head = state.get("out_head.weight")
    if head is not None and head.shape[0] != model.out_head.out_features:
        model.out_head = torch.nn.Linear(
            head.shape[1], head.shape[0], bias="out_head.bias" in state
        )
    model.load_state_dict(state)
    return model


def build_model(model_cfg: Mapping[str, Any], init_from: str | None) -> GPT:
    """The GPT a run starts from.

    ``init_from`` is ``None`` (random init from ``model_cfg``), one of our ``.ckpt`` files, or
    anything :func:`llmprep.model.weights.load_pretrained` takes (a Hugging Face id or folder, an
    OpenAI TF checkpoint folder). With weights, the architecture is the checkpoint's and only
    ``model.dropout`` is taken from the config; a differing size in the config is reported.
    """
    config = model_config_from(model_cfg)
    if init_from is None:
        return GPT(config)
    if str(init_from).endswith(".ckpt"):
        model = load_checkpoint_model(init_from, dropout=config.dropout)
    else:
        from llmprep.model.weights import load_pretrained

        model = load_pretrained(str(init_from), dropout=config.dropout)
    loaded = asdict(model.config)
    differing = {
        k: (getattr(config, k), loaded[k]) for k in ARCH_KEYS if getattr(config, k) != loaded[k]
    }
    if differing:
        log.warning(
            "model=%s differs from init_from=%s in %s; using the checkpoint's architecture",
            model_cfg.get("name"),
            init_from,
            ", ".join(f"{k} ({a} vs {b})" for k, (a, b) in differing.items()),
        )
    return model
