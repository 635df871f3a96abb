"""Datasets from the Hugging Face hub: the one loader, and text datasets saved as JSON Lines.

Hub datasets are downloaded into the hub's own cache (``HF_HOME``, the ``datasets`` default),
where the hub tools find them again, offline too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmprep.data.errors import DataError
from llmprep.data.sources import cache_dir
from llmprep.files import atomic_path

HUB_PREFIX = "hf:"
"""How a data path names a hub dataset: ``hf:tatsu-lab/alpaca``."""


def load_hub(dataset: str, config: str | None, split: str, instead: str) -> Any:
    """Split ``split`` of the hub dataset ``dataset`` (a ``datasets.Dataset``).

    Any failure to load it (offline, an unknown name, no network) is one ``DataError`` that says
    how to go on without the hub: save the records to a file and pass ``instead``.
    """
    from datasets import load_dataset

    try:
        return load_dataset(dataset, config, split=split)
    except Exception as err:
        message = (
            f"cannot load {dataset!r} (config {config!r}, split {split!r}) from the Hugging Face "
            f"hub ({type(err).__name__}: {err}). Without a network, save its records to a file "
            f"and pass {instead}"
        )
        raise DataError(f"{HUB_PREFIX}{dataset}", None, None, message) from err


def hub_text_file(dataset: str, config: str | None, split: str, text_field: str) -> Path:
    """A ``.jsonl`` file in the cache with one ``{"text": ...}`` document per dataset record.

    Fetched once with ``load_hub`` (which needs a network, or the hub cache), then reused; each
    record stays its own document, separated by ``<|endoftext|>`` in the store. Line ``n`` is
    record ``n - 1``, so an error about a line points at its record: an empty row (a missing
    value reads as ``None``) is written as ``""``, and the token store skips it.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(p for p in (dataset, config, split) if p))
    target = cache_dir() / "hub" / f"{name}.{text_field}.jsonl"
    if target.is_file():
        return target
    records = load_hub(dataset, config, split, "data=text_files data.paths=[/path/to/that/file]")
    if text_field not in records.column_names:
        message = f"data.hf_text_field={text_field!r} is not a column: {records.column_names}"
        raise DataError(f"{HUB_PREFIX}{dataset}", None, text_field, message)
    with atomic_path(target) as temp, open(temp, "w", encoding="utf-8") as out:
        for text in records[text_field]:
            out.write(json.dumps({"text": "" if text is None else text}) + "\n")
    return target
