"""Where a stage's GPT comes from: random initialisation, pretrained GPT-2, or one of our runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llmprep.checkpoints import read_checkpoint
from llmprep.model import GPT, GPTConfig
from llmprep.model.lora import CHECKPOINT_KEY, PREFIX, load_base, load_merged
from llmprep.model.weights import load_pretrained

log = logging.getLogger(__name__)

ARCH_KEYS = ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads")


def _fit_head(model: GPT, state: Mapping[str, torch.Tensor]) -> None:
    """Give ``model`` the head ``state`` holds when it is not the vocabulary projection (a
    classifier's ``out_head``, stored plain or as a LoRA layer's ``base_layer``)."""
    for prefix in ("out_head.", "out_head.base_layer."):
        head = state.get(prefix + "weight")
        if head is not None and head.shape[0] != model.out_head.out_features:
            model.out_head = torch.nn.Linear(
                head.shape[1], head.shape[0], bias=prefix + "bias" in state
            )


def checkpoint_model(
    ckpt: Mapping[str, Any], path: str | Path, dropout: float | None = None
) -> GPT:
    """Our GPT with the weights of a checkpoint read by :func:`read_checkpoint` (any stage; the
    tasks keep the model at ``self.model``).

    A LoRA run's checkpoint gives its base (re-loaded from the reference it records, or stored in
    it when the base was random) with the adapters merged in: a plain GPT.
    """
    hparams = ckpt.get("hyper_parameters", {})
    if "model_config" not in hparams:
        raise ValueError(
            f"init_from={str(path)!r}: checkpoint has no `model_config` hyperparameters"
        )
    model_config = dict(hparams["model_config"])
    if dropout is not None:
        model_config["dropout"] = dropout
    state = {k[len(PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    if not state:
        raise ValueError(f"{path}: checkpoint holds no `model.*` weights")
    lora = ckpt.get(CHECKPOINT_KEY)
    reference = lora.get("base") if lora is not None else None
    if reference is not None:
        model = load_base(reference, model_config["dropout"])
    else:
        model = GPT(GPTConfig(**model_config))
    _fit_head(model, state)
    if lora is None:
        model.load_state_dict(state)
        return model
    return load_merged(model, lora, state, str(path))


def load_checkpoint_model(path: str | Path, dropout: float | None = None) -> GPT:
    """Our GPT with the weights of one of our Lightning checkpoints (any stage; a LoRA run's
    merged, see :func:`checkpoint_model`)."""
    return checkpoint_model(read_checkpoint(path), path, dropout)


def load_weights(init_from: str | Path, dropout: float) -> GPT:
    """Our GPT holding the weights ``init_from`` names, with ``dropout``: one of our ``.ckpt``
    files, or anything :func:`llmprep.model.weights.load_pretrained` takes (a Hugging Face id or
    folder, an OpenAI TF checkpoint folder)."""
    if str(init_from).endswith(".ckpt"):
        return load_checkpoint_model(init_from, dropout=dropout)
    return load_pretrained(str(init_from), dropout=dropout)


def model_config_from(model_cfg: Mapping[str, Any]) -> GPTConfig:
    """A ``GPTConfig`` from the ``model`` config group (its ``name`` is only a label)."""
    return GPTConfig.from_dict({k: v for k, v in model_cfg.items() if k != "name"})


def build_model(model_cfg: Mapping[str, Any], init_from: str | None) -> GPT:
    """The GPT a run starts from: random from the ``model`` config group when ``init_from`` is
    ``None``, else the weights :func:`load_weights` finds there.

    With weights, the architecture is the checkpoint's and only ``model.dropout`` is taken from
    the config; a differing size in the config is reported.
    """
    config = model_config_from(model_cfg)
    if init_from is None:
        return GPT(config)
    model = load_weights(init_from, config.dropout)
    differing = [
        f"{key} ({getattr(config, key)} vs {getattr(model.config, key)})"
        for key in ARCH_KEYS
        if getattr(config, key) != getattr(model.config, key)
    ]
    if differing:
        log.warning(
            "model=%s differs from init_from=%s in %s; using the checkpoint's architecture",
            model_cfg.get("name"),
            init_from,
            ", ".join(differing),
        )
    return model
