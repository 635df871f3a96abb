"""Turning the composed Hydra config into plain, loggable, secret-free data, and writing the run
folder's copy of it.

Redacted (replaced by ``<redacted>``): the value of every key named like a secret (``api_key``,
``token``, ``password``...; keys ending in ``_env`` name a variable and are kept), every
``key=value`` override of such a key, and every occurrence of the value of an environment
variable named like a secret (``WANDB_API_KEY``...) however it got into the config. This happens
before anything is written or logged: the run folder's ``.hydra/`` files (written by llmprep, so
Hydra's unredacted copies never exist), the checkpoints' hyperparameters, the W&B config and
command line. A sweep's ``multirun.yaml``, written before any job starts, is rewritten redacted
by its first job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from llmprep.files import atomic_path

_SECRET_WORDS = r"(?:key|token|secret|password|passwd|credentials?)"
SECRET_NAME = re.compile(rf"{_SECRET_WORDS}$", re.IGNORECASE)
_SECRET_ASSIGNMENT = re.compile(rf"([\w.\-/@]*{_SECRET_WORDS})=([^,\s]+)", re.IGNORECASE)
REDACTED = "<redacted>"
RUN_CONFIG_DIR = ".hydra"
"""Where a run's composed config goes (Hydra's usual folder, written by llmprep)."""


def _env_secrets() -> list[str]:
    """Values of environment variables named like secrets (``*_KEY``, ``*_TOKEN``...), 6+ chars."""
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6]


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with secret values and ``<secret key>=<value>`` assignments redacted."""
    for s in _env_secrets() if secrets is None else secrets:
        text = text.replace(s, REDACTED)
    return _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def redact(value: Any, secrets: list[str] | None = None, key: str = "") -> Any:
    """A copy of ``value`` (plain dicts, lists, strings) with secrets replaced by
    ``<redacted>`` (see the module docstring)."""
    secrets = _env_secrets() if secrets is None else secrets
    if isinstance(value, dict):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets, key) for v in value]
    if isinstance(value, str):
        if SECRET_NAME.search(key) and not key.endswith("_env") and value:
            return REDACTED
        return redact_text(value, secrets)
    return value


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain dicts and lists, secrets redacted (hparams, W&B, JSON)."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return redact(data)


def _save_redacted(data: Any, path: Path) -> None:
    """Write ``data`` (unresolved, as composed) as YAML with secrets redacted, atomically."""
    plain = OmegaConf.to_container(data, resolve=False) if OmegaConf.is_config(data) else data
    with atomic_path(path) as temp:
        temp.write_text(OmegaConf.to_yaml(OmegaConf.create(redact(plain))), encoding="utf-8")


class RedactedRunFiles(Callback):
    """Hydra callback writing ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` of
    each job with secrets redacted (Hydra's own writer is off: ``hydra.output_subdir: null``).

    Extra DDP ranks, which Lightning starts as ``train.py`` runs in the same folder, write none.
    """

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        hydra = HydraConfig.get()
        folder = Path(hydra.runtime.output_dir) / RUN_CONFIG_DIR
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        _save_redacted(task, folder / "config.yaml")
        _save_redacted(OmegaConf.masked_copy(config, "hydra"), folder / "hydra.yaml")
        _save_redacted(list(hydra.overrides.task), folder / "overrides.yaml")
        sweep_file = Path(hydra.sweep.dir) / "multirun.yaml"
        if hydra.mode == RunMode.MULTIRUN and sweep_file.is_file():
            _save_redacted(OmegaConf.load(sweep_file), sweep_file)
