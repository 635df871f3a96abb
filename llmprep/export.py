"""``python -m llmprep.export ckpt_path=<run>/checkpoints/best.ckpt out_dir=<folder>``: one of our
checkpoints as a standalone model folder, LoRA adapters merged into their base.

A language model (pretrain, instruct, dpo) becomes a Hugging Face GPT-2 folder that
``transformers.GPT2LMHeadModel.from_pretrained`` loads (an instruction-tuned one records its
prompt style in ``config.json``). A classifier, which has no GPT-2
equivalent in ``transformers``, is written in our own layout: ``model.safetensors`` with our
GPT's tensor names and a ``config.json`` holding its ``GPTConfig``, class count and label names.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llmprep.checkpoints import read_checkpoint
from llmprep.commands import command_main, setting
from llmprep.model import GPT
from llmprep.model.gpt import has_classifier_head
from llmprep.model.init import checkpoint_model
from llmprep.model.weights import CONFIG_FILE, export_hf, read_json, save_folder

CLASSIFIER_FORMAT = "llmprep-classifier"
"""``config.json``'s ``format`` for a classifier in our layout."""

PROMPT_STYLE_KEY = "llmprep_prompt_style"
"""``config.json``'s key for the prompt style an instruction-tuned model was tuned with, so
``llmprep.generate`` and ``llmprep.serve`` prompt the exported folder as they prompt the
checkpoint."""


def export_classifier(
    model: GPT, out_dir: str | Path, label_names: Sequence[str] | None = None, **extra: Any
) -> Path:
    """Write a GPT with a classifier head to ``out_dir`` in our layout (each file atomically);
    returns ``out_dir``. ``extra`` plain values (e.g. the pooling) go into ``config.json``."""
    head = model.out_head
    if not has_classifier_head(model) or not isinstance(head, torch.nn.Linear):
        raise ValueError(f"export_classifier writes a classifier, but out_head is {head}")
    if label_names is not None and len(label_names) != head.out_features:
        raise ValueError(
            f"{len(label_names)} label names for a head of {head.out_features} classes"
        )
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    config = {
        "format": CLASSIFIER_FORMAT,
        "model_config": asdict(model.config),
        "num_classes": head.out_features,
        "head_bias": head.bias is not None,
        "label_names": list(label_names) if label_names is not None else None,
        **extra,
    }
    return save_folder(out_dir, state, config)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Export one of our checkpoints (any stage, LoRA or not; see the module docstring);
    returns ``out_dir``."""
    ckpt = read_checkpoint(ckpt_path, "ckpt_path")
    model = checkpoint_model(ckpt, ckpt_path)
    hparams = ckpt["hyper_parameters"]
    if not has_classifier_head(model):
        style = hparams.get("prompt_style")
        return export_hf(model, out_dir, {PROMPT_STYLE_KEY: style} if style else None)
    stage = hparams.get("config", {}).get("stage", {})
    return export_classifier(
        model,
        out_dir,
        hparams.get("label_names"),
        stage=stage.get("name"),
        pooling=stage.get("pooling"),
    )


@dataclass
class ExportSettings:
    ckpt_path: str = setting(help="the checkpoint to export (.ckpt)")
    out_dir: str = setting(help="the folder to write (made if missing; its other files kept)")


def export(settings: ExportSettings) -> None:
    """Export ``settings.ckpt_path`` and say what was written where."""
    out = export_checkpoint(settings.ckpt_path, settings.out_dir)
    kind = read_json(out / CONFIG_FILE).get("format", "Hugging Face GPT-2")
    print(f"exported {settings.ckpt_path} to {out} ({kind} folder)")


main = command_main(
    ExportSettings,
    export,
    "python -m llmprep.export",
    "Export a checkpoint (LoRA adapters merged) as a Hugging Face GPT-2 folder, or a "
    "classifier in llmprep's safetensors layout.",
    ("python -m llmprep.export ckpt_path=<run>/checkpoints/best.ckpt out_dir=exported",),
)

if __name__ == "__main__":
    sys.exit(main())
