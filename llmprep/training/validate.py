"""Up-front checks of the run config, so a mistyped value stops the run before anything is
built or written, with the key named (``trainer.max_steps='abc': expected an integer >= -1``).

Only values llmprep or Lightning would otherwise misread or reject deep inside a run are checked
here: numbers that must be numbers, counts that must be positive. Missing optional keys (a
stage without ``data.stride``) are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llmprep.errors import ConfigError
from llmprep.model.config import is_int, is_number

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """``key`` holds an ``int`` (or any real number with ``real``) ``>= low`` (``> low`` with
    ``strict``), or null when ``nullable``."""

    key: str
    low: float
    real: bool = False
    strict: bool = False
    nullable: bool = False

    def check(self, value: Any) -> None:
        if value is None and self.nullable:
            return
        integer = is_int(value)
        finite = is_number(value) and math.isfinite(value)
        in_range = (value > self.low if self.strict else value >= self.low) if finite else False
        if not (integer or (self.real and finite)) or not in_range:
            kind = "a number" if self.real else "an integer"
            bound = f"{'>' if self.strict else '>='} {self.low:g}"
            null = " or null" if self.nullable else ""
            raise ConfigError(f"{self.key}={value!r}: expected {kind} {bound}{null}")


RULES = (
    Rule("seed", 0),
    Rule("trainer.max_epochs", -1, nullable=True),
    Rule("trainer.max_steps", -1),
    Rule("trainer.accumulate_grad_batches", 1),
    Rule("trainer.log_every_n_steps", 1),
    Rule("trainer.check_val_every_n_epoch", 1, nullable=True),
    Rule("trainer.val_check_interval", 0, real=True, strict=True, nullable=True),
    Rule("trainer.gradient_clip_val", 0, real=True, nullable=True),
    Rule("trainer.limit_train_batches", 0, real=True, nullable=True),
    Rule("trainer.limit_val_batches", 0, real=True, nullable=True),
    Rule("trainer.num_sanity_val_steps", -1, nullable=True),
    Rule("optim.lr", 0, real=True, strict=True),
    Rule("optim.min_lr", 0, real=True),
    Rule("optim.weight_decay", 0, real=True),
    Rule("optim.eps", 0, real=True, strict=True),
    Rule("optim.warmup_steps", 0),
    Rule("data.batch_size", 1),
    Rule("data.max_length", 1, nullable=True),
    Rule("data.stride", 1, nullable=True),
    Rule("data.num_workers", 0),
    Rule("lora.rank", 0),
    Rule("lora.alpha", 0, real=True, strict=True),
    Rule("lora.dropout", 0, real=True),
    Rule("hardware.threads", 1, nullable=True),
    Rule("eval.batch_size", 1),
    Rule("stage.generation.max_new_tokens", 1),
    Rule("stage.generation.temperature", 0, real=True),
    Rule("stage.generation.top_k", 1, nullable=True),
    Rule("stage.generation.limit", 0, nullable=True),
    Rule("stage.generation.batch_size", 1),
    Rule("stage.beta", 0, real=True, strict=True),
    Rule("stage.label_smoothing", 0, real=True),
)

STRATEGIES = ("auto", "ddp", "ddp_spawn")
"""The Lightning strategy names ``hardware.strategy`` may hold; any other strategy is a
``_target_`` config, as ``hardware=fsdp``'s (sharded per transformer block)."""


def validate_config(cfg: DictConfig) -> None:
    """Raise a :class:`ConfigError` naming the first key of ``cfg`` with a bad value."""
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        if value is not _ABSENT:
            rule.check(value)
    betas = OmegaConf.select(cfg, "optim.betas", default=None)
    if betas is not None:
        values = list(betas) if OmegaConf.is_list(betas) else betas
        if not (
            isinstance(values, list)
            and len(values) == 2
            and all(is_number(b) for b in values)
            and all(0 <= b < 1 for b in values)
        ):
            raise ConfigError(f"optim.betas={values!r}: expected two numbers in [0, 1)")
    resume = OmegaConf.select(cfg, "resume", default=None)
    if resume not in (None, "auto"):
        raise ConfigError(
            f"resume={resume!r}: expected auto (the newest last.ckpt of this command) or null; "
            "resume a given checkpoint with ckpt_path=<file>"
        )
    keep = OmegaConf.select(cfg, "hardware.keep_freed_memory", default=True)
    if not isinstance(keep, bool):
        raise ConfigError(f"hardware.keep_freed_memory={keep!r}: expected true or false")
    strategy = OmegaConf.select(cfg, "hardware.strategy", default=None)
    if isinstance(strategy, str) and strategy not in STRATEGIES:
        raise ConfigError(
            f"hardware.strategy={strategy!r}: expected {', '.join(STRATEGIES)} or a _target_ "
            "config (hardware=fsdp shards per transformer block)"
        )
