"""LoRA adapters on our GPT through peft: which layers get them, how they are injected, frozen
and merged back, and what a LoRA run's checkpoints hold.

Adapters are injected with ``peft.inject_adapter_in_model`` rather than wrapped in a
``PeftModel``: the model stays our ``GPT`` (its attributes, ``forward(idx, kv_cache=...)``,
``generate``, a stage's own forward and weight export work unchanged), with nothing depending on
peft's transformers-oriented wrapper. The cost is only in names: an adapted layer's base weight
is ``<layer>.base_layer.weight``, its adapters ``<layer>.lora_{A,B}.default.weight``.

Scaling follows peft: an adapted Linear computes ``W x + (alpha / rank) * B A x``. (The book's
appendix E code multiplies by ``alpha`` alone; rank 16 with its alpha 16 is alpha 256 here.)

A LoRA run's checkpoints hold only what the run changed (its adapters, and tensors the stage added
such as a new head) plus a reference to the base weights: ``init_from`` and the sha256 of its
weights file. Loading re-reads the base from there and refuses one whose sha256 changed. A run
from a random base (``init_from: null``) has no base to refer to, so its checkpoints store the
base too. :func:`start_lora` sets a run up; :func:`save_lora` and :func:`restore_lora` are all a
task's checkpoint hooks call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmprep.files import file_sha256
from llmprep.model.config import check, is_int, is_number
from llmprep.model.gpt import GPT, has_classifier_head
from llmprep.model.weights import weights_file

log = logging.getLogger(__name__)

BLOCK_TARGETS = ("query", "key", "value", "out_proj", "fc", "proj")
"""Every Linear layer of a transformer block: the default LoRA targets."""

CHECKPOINT_KEY = "lora"
"""Key of a LoRA run's checkpoint entry: its settings and the reference to its base weights."""

PREFIX = "model."
"""Start of the model's names in a task's state dict (the tasks keep it at ``self.model``)."""

BASE_LAYER = ".base_layer"


@dataclass(frozen=True)
class LoraSettings:
    """The ``lora`` config group, checked. ``targets=None`` means the default targets, resolved
    against a model by :func:`resolve_targets`."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        rank, alpha, dropout, targets = self.rank, self.alpha, self.dropout, self.targets
        check(is_int(rank) and rank >= 1, "lora.rank", "a positive integer (0 = off)", rank)
        check(is_number(alpha) and alpha > 0, "lora.alpha", "a number > 0", alpha)
        ok = is_number(dropout) and 0 <= dropout < 1
        check(ok, "lora.dropout", "a number in [0, 1)", dropout)
        named = all(isinstance(t, str) and t for t in targets or ())
        ok = targets is None or (bool(targets) and named)
        check(ok, "lora.targets", "null or a non-empty list of layer names", list(targets or ()))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> LoraSettings | None:
        """Settings from the ``lora`` config group (or a checkpoint's entry); ``None`` when
        absent or ``rank`` is 0."""
        if not cfg or cfg.get("rank", 0) == 0:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known - {"base"})
        if unknown:
            raise ValueError(
                f"unknown lora setting(s) {', '.join(unknown)}; "
                f"settings: {', '.join(sorted(known))}"
            )
        targets = cfg.get("targets")
        if isinstance(targets, str):
            targets = [targets]
        return cls(
            rank=cfg["rank"],
            alpha=cfg.get("alpha", 16),
            dropout=cfg.get("dropout", 0.0),
            targets=tuple(targets) if targets is not None else None,
        )


def resolve_targets(model: GPT, targets: Iterable[str] | None) -> tuple[str, ...]:
    """The layer names LoRA adapts in ``model``: ``targets``, checked, or by default every
    Linear of the blocks plus ``out_head`` when it is a classifier head.

    The 50,257-way LM head is left out by default (its adapter alone would hold 0.8M of
    gpt2-small's 3.5M LoRA parameters); list ``out_head`` to adapt it. Each name must match a
    Linear layer, so a typo is an error rather than a silently unadapted model.
    """
    if targets is None:
        return BLOCK_TARGETS + (("out_head",) if has_classifier_head(model) else ())
    targets = tuple(targets)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for target in targets:  # peft's rule: the full module name or its last dotted parts
        if not any(name == target or name.endswith("." + target) for name in linear):
            names = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise ValueError(
                f"lora.targets: {target!r} matches no Linear layer of the model; "
                f"its Linear layers are named {', '.join(names)}"
            )
    return targets


def apply_lora(
    model: GPT, settings: LoraSettings, added: Collection[torch.Tensor] = ()
) -> LoraSettings:
    """Inject LoRA adapters into ``model`` in place and freeze its base weights; return
    ``settings`` with the targets used.

    ``added`` are the tensors a stage added to the base model (e.g. a new classifier head). Those
    in a layer LoRA adapts are frozen like any base weight, as in the book's appendix E (a random
    head plus its adapter); those outside keep the trainability the stage gave them, since they
    have no trained base to adapt.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = resolve_targets(model, settings.targets)
    added_ids = {id(t) for t in added}
    trainable = {id(p) for p in model.parameters() if p.requires_grad and id(p) in added_ids}
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        bias="none",
    )
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        if id(p) in trainable and BASE_LAYER + "." not in name:
            p.requires_grad = True
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    share = f"{trained:,} trainable of {total:,} parameters ({100 * trained / total:.2f}%)"
    scaling = f"alpha {settings.alpha:g} (scaling {settings.alpha / settings.rank:g})"
    log.info("LoRA rank %d, %s on %s: %s", settings.rank, scaling, ", ".join(targets), share)
    return dataclasses.replace(settings, targets=targets)


def base_name(name: str) -> str:
    """The plain GPT name of a tensor of a LoRA-injected model (``base_layer`` removed)."""
    return name.replace(BASE_LAYER, "")


def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its base weight and put the plain Linear back, in place; returns
    ``model``, now a plain GPT computing what the adapted one computed.

    A head tied to the token embeddings is untied first when it was adapted, so merging its
    adapter does not change the embeddings too.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        base = layer.get_base_layer()
        if base.weight is model.tok_emb.weight:
            base.weight = nn.Parameter(base.weight.detach().clone())
            model.config = dataclasses.replace(model.config, tie_weights=False)
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, base)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def fill_base_tensors(
    model: nn.Module,
    stored: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    origin: str,
    required: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """A full state dict for the LoRA-injected ``model``: the tensors a checkpoint ``stored``,
    completed with the base tensors it leaves out, taken from ``base`` (plain GPT names).

    ``required`` (default: the adapters) must be stored; anything missing that the base cannot
    give (with the right shape) is reported, naming ``origin``.
    """
    own = model.state_dict()
    if required is None:
        required = {n for n in own if ".lora_A." in n or ".lora_B." in n}
    full = dict(stored)
    missing = []
    for name, tensor in own.items():
        if name in full:
            continue
        source = base.get(base_name(name))
        if name in required or source is None or source.shape != tensor.shape:
            missing.append(name)
        else:
            full[name] = source
    if missing:
        raise ValueError(
            f"{origin}: missing {len(missing)} LoRA or stage tensor(s) such as "
            f"{', '.join(missing[:4])}; was it trained with the same lora settings and stage?"
        )
    return full


def load_merged(
    model: GPT, lora: Mapping[str, Any], stored: Mapping[str, torch.Tensor], origin: str
) -> GPT:
    """``model``, the base a LoRA checkpoint's ``lora`` entry describes, with the adapters (and
    stage tensors) it ``stored`` loaded and merged in: a plain GPT. ``origin`` names the
    checkpoint in errors."""
    base = model.state_dict()
    apply_lora(model, LoraSettings.from_config(lora))
    model.load_state_dict(fill_base_tensors(model, stored, base, origin))
    return merge_lora(model)


def base_reference(init_from: str) -> dict[str, str]:
    """What a LoRA checkpoint records about its base: ``init_from`` (a local path made
    absolute, so loading works from any folder; a hub id as given) and the sha256 of its weights
    file (see :func:`llmprep.model.weights.weights_file`)."""
    text = str(init_from)
    path = Path(text).expanduser()
    source = str(path.resolve()) if path.exists() else text
    return {"init_from": source, "sha256": file_sha256(weights_file(text))}


def check_base(expected: Mapping[str, str], actual: Mapping[str, str]) -> None:
    """Refuse a base other than the one a LoRA checkpoint's adapters were trained on."""
    if actual["sha256"] != expected["sha256"]:
        raise ValueError(
            f"the LoRA checkpoint's adapters were trained on init_from={expected['init_from']!r} "
            f"(sha256 {expected['sha256']}), but init_from={actual['init_from']!r} has sha256 "
            f"{actual['sha256']}; adapters only fit the base weights they were trained on"
        )


def load_base(reference: Mapping[str, str], dropout: float = 0.0) -> GPT:
    """The base weights a LoRA checkpoint refers to (``{"init_from", "sha256"}``), checked
    against the recorded sha256 first, so adapters never land on weights they were not trained
    on."""
    from llmprep.model.init import load_weights  # init.py builds on this module

    check_base(reference, base_reference(reference["init_from"]))
    return load_weights(reference["init_from"], dropout)


@dataclass
class LoraRun:
    """A model's LoRA adapters and what its checkpoints hold.

    ``stored``: the state-dict entries a checkpoint keeps (adapters, tensors the stage added,
    anything trainable). ``base``: the reference to the base weights (``None`` for a random base,
    then stored whole). ``missing_base``: the ``init_from`` whose weights the model was built
    without, until :func:`restore_lora` puts a checkpoint's base in.
    """

    settings: LoraSettings
    stored: frozenset[str]
    base: dict[str, str] | None
    missing_base: str | None


def start_lora(
    model: GPT,
    lora_cfg: Mapping[str, Any] | None,
    base_tensors: Iterable[torch.Tensor],
    init_from: str | None,
    holds_base: bool,
) -> LoraRun | None:
    """Inject the adapters the ``lora`` config group asks for into ``model`` and note what its
    checkpoints store and which base they refer to; ``None`` (nothing done) when ``rank`` is 0.

    ``base_tensors`` are the GPT's before the stage adapted it: the others (a new head) are
    stored beside the adapters. ``holds_base`` says whether ``model`` holds ``init_from``'s
    weights already; otherwise a checkpoint must supply them before the run can be saved.
    """
    settings = LoraSettings.from_config(lora_cfg)
    if settings is None:
        return None
    base_ids = {id(t) for t in base_tensors}
    added = [t for t in model.state_dict(keep_vars=True).values() if id(t) not in base_ids]
    settings = apply_lora(model, settings, added)
    stored = frozenset(
        name
        for name, t in model.state_dict(keep_vars=True).items()
        if id(t) not in base_ids or t.requires_grad
    )
    base = base_reference(init_from) if init_from and holds_base else None
    return LoraRun(settings, stored, base, missing_base=init_from if not holds_base else None)


def save_lora(lora: LoraRun | None, checkpoint: dict[str, Any]) -> None:
    """Make a Lightning ``checkpoint`` a LoRA run's: drop the referenced base tensors from its
    state dict and record the settings and the base reference; nothing without LoRA."""
    if lora is None:
        return
    if lora.missing_base is not None:
        raise RuntimeError(
            f"this LoRA task was built without its base weights (init_from="
            f"{lora.missing_base!r}): build it with from_config, or restore it with "
            "load_from_checkpoint, before saving it"
        )
    state = checkpoint["state_dict"]
    if lora.base is not None:
        for key in [k for k in state if k.startswith(PREFIX)]:
            if key[len(PREFIX) :] not in lora.stored:
                del state[key]
    targets = lora.settings.targets
    settings = dataclasses.asdict(lora.settings) | {
        "targets": None if targets is None else list(targets)
    }
    checkpoint[CHECKPOINT_KEY] = {**settings, "base": lora.base}


def restore_lora(lora: LoraRun | None, model: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Check a Lightning ``checkpoint``'s LoRA entry against this run's ``lora`` and put the base
    tensors it leaves out back into its state dict, so Lightning's strict loading sees a complete
    state.

    The base comes from ``model`` when it holds the one the checkpoint refers to, else it is
    re-read from the reference (its sha256 checked); from then on the run refers to that base.
    """
    stored = checkpoint.get(CHECKPOINT_KEY)
    if lora is None:
        if stored is not None:
            raise ValueError(
                f"the checkpoint holds LoRA adapters (rank {stored.get('rank')}) but this "
                "run has lora.rank=0: set the same lora settings to resume it"
            )
        return
    if stored is None:
        raise ValueError(
            f"the checkpoint was trained without LoRA but this run has lora.rank="
            f"{lora.settings.rank}: resume it with lora.rank=0, or start a LoRA run from it "
            "with init_from=<checkpoint>"
        )
    reference = stored.get("base")
    base: dict[str, torch.Tensor] = {}
    if reference is not None and lora.base is not None:
        check_base(reference, lora.base)
        base = {base_name(n): t for n, t in model.state_dict().items()}
    elif reference is not None:
        base = load_base(reference).state_dict()
    lora.base, lora.missing_base = reference, None
    state = checkpoint["state_dict"]
    ours = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    full = fill_base_tensors(model, ours, base, "the LoRA checkpoint", required=lora.stored)
    state.update({PREFIX + name: t for name, t in full.items()})
