"""The GPT's hyperparameters, with the book's field names; the named sizes are conf/model/*.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

INITS = ("gpt2", "torch")


def is_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` proper (``True`` is not a layer count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is an ``int`` or ``float`` other than a bool."""
    return is_int(value) or isinstance(value, float)


def check(ok: bool, name: str, expected: str, value: object) -> None:
    """Unless ``ok``, raise ``ValueError("<name> must be <expected>, got <value!r>")``."""
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass
class GPTConfig:
    """Shape and regularisation of a GPT-2 style model.

    Plain values only, so ``dataclasses.asdict(config)`` can be stored as checkpoint
    hyperparameters and turned back into a config with ``GPTConfig(**d)``. The defaults are
    GPT-2 small's; the named sizes are ``conf/model/*.yaml`` (``model=gpt2-medium``).
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    dropout: float = 0.0
    qkv_bias: bool = False
    tie_weights: bool = False
    init: str = "gpt2"
    """How fresh weights are drawn: ``gpt2`` (normal(0, 0.02), residual projections scaled by
    1/sqrt(2 * n_layers)) or ``torch`` (PyTorch's per-layer defaults, as the book's code has:
    embeddings normal(0, 1)). On a tiny corpus like The Verdict the ``torch`` scale memorises far
    faster; ``gpt2`` is what GPT-2 was trained with."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads"):
            value = getattr(self, name)
            check(is_int(value) and value >= 1, f"GPTConfig.{name}", "a positive integer", value)
        if self.emb_dim % self.n_heads:
            raise ValueError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})"
            )
        ok = is_number(self.dropout) and 0 <= self.dropout < 1
        check(ok, "GPTConfig.dropout", "a number in [0, 1)", self.dropout)
        check(self.init in INITS, "GPTConfig.init", f"one of {', '.join(INITS)}", self.init)
        for name in ("qkv_bias", "tie_weights"):
            value = getattr(self, name)
            check(isinstance(value, bool), f"GPTConfig.{name}", "true or false", value)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.emb_dim // self.n_heads

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GPTConfig:
        """A config from plain values, e.g. stored hyperparameters; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown GPTConfig field(s) {', '.join(unknown)}; "
                f"fields: {', '.join(sorted(known))}"
            )
        return cls(**values)
