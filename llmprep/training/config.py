"""Turning the composed Hydra config into plain, loggable, secret-free data."""

from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

SECRET_NAME = re.compile(r"(key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
REDACTED = "<redacted>"


def _env_secrets() -> list[str]:
    """Values of environment variables named like secrets (``*_KEY``, ``*_TOKEN``...), 6+ chars."""
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6]


def redact(value: Any, secrets: list[str] | None = None, key: str = "") -> Any:
    """A copy of ``value`` with secrets replaced by ``<redacted>``.

    A string is redacted when its key names a secret (``api_key``, ``token``...) or when it holds
    the value of a secret-named environment variable (``WANDB_API_KEY``, ``OPENAI_API_KEY``...),
    however it got there (an ``${oc.env:...}`` interpolation, a pasted override).
    Keys ending in ``_env`` name a variable, not a value, and are kept.
    """
    secrets = _env_secrets() if secrets is None else secrets
    if isinstance(value, dict):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets, key) for v in value]
    if isinstance(value, str):
        if SECRET_NAME.search(key) and not key.endswith("_env") and value:
            return REDACTED
        for s in secrets:
            if s in value:
                value = value.replace(s, REDACTED)
    return value


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain dicts and lists, secrets redacted (hparams, W&B, JSON)."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return redact(data)
