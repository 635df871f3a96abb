"""The GPT's hyperparameters, with the book's field names; the named sizes are conf/model/*.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

INITS = ("gpt2", "torch")


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
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads:
            raise ValueError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"GPTConfig.dropout must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ValueError(f"GPTConfig.init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name in ("qkv_bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )

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
