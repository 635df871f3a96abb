"""The one way llmprep reads a Lightning checkpoint, local or remote: ``torch.load`` with
``weights_only=True`` (never pickled code), with errors that name the setting the path came from.

A ``http(s)://`` checkpoint is first downloaded into the cache (``$LLMPREP_CACHE/checkpoints``,
by a hash of its URL, atomically), never through Lightning's remote loading, which unpickles
downloads. ``HF_HUB_OFFLINE=1`` refuses URLs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llmprep.data.sources import DOWNLOAD_TIMEOUT_S, OFFLINE_ENV, cache_dir, offline
from llmprep.errors import CheckpointError
from llmprep.files import atomic_path

REMOTE_SCHEMES = ("http://", "https://")


def local_checkpoint(path: str | Path, setting: str) -> Path:
    """The local file of checkpoint ``path`` (a URL is downloaded into the cache once)."""
    if not str(path).startswith(REMOTE_SCHEMES):
        local = Path(path).expanduser()
        if not local.is_file():
            raise CheckpointError(f"{setting}={str(path)!r}: no such file")
        return local.resolve()
    url = str(path)
    name = Path(url.split("?")[0]).name or "checkpoint.ckpt"
    target = cache_dir() / "checkpoints" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.is_file():
        return target
    if offline():
        raise CheckpointError(
            f"{setting}={url!r}: not in the cache ({target}) and "
            f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]} forbids downloading it; download it "
            "yourself and give its local path"
        )
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            atomic_path(target) as temp,
            open(temp, "wb") as out,
        ):
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as err:
        raise CheckpointError(f"{setting}={url!r}: download failed ({err})") from err
    return target


def read_checkpoint(path: str | Path, setting: str = "init_from") -> dict[str, Any]:
    """The contents of checkpoint ``path`` (a file or a URL), read safely; ``setting`` is the
    key the path came from, named in every error."""
    local = local_checkpoint(path, setting)
    corrupt = CheckpointError(
        f"{setting}={str(path)!r}: corrupt or truncated checkpoint ({local.stat().st_size} bytes "
        "that torch cannot read)"
    )
    if not zipfile.is_zipfile(local):
        raise corrupt
    try:
        ckpt = torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{setting}={str(path)!r}: holds pickled objects other than tensors and plain "
            "values, which llmprep never loads (it may run code)"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise corrupt from err
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{setting}={str(path)!r}: not an llmprep checkpoint")
    return dict(ckpt)


def run_config(ckpt: Mapping[str, Any], path: str | Path, setting: str) -> dict[str, Any]:
    """The plain run config an llmprep checkpoint stores (under ``"config"``)."""
    config = ckpt.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("stage"), Mapping):
        raise CheckpointError(f"{setting}={str(path)!r}: not an llmprep checkpoint")
    return dict(config)


def require_resumable(
    ckpt: Mapping[str, Any], path: str | Path, setting: str = "ckpt_path"
) -> None:
    """Refuse to resume from a weights-only checkpoint (``best.ckpt`` by default): it has no
    optimizer, loop or data state, which Lightning would fail on with a bare ``KeyError``."""
    if "optimizer_states" not in ckpt:
        raise CheckpointError(
            f"{setting}={str(path)!r} holds weights only: resume from last.ckpt, or start from "
            f"it with init_from={str(path)!r}"
        )
