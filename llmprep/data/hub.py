"""Text datasets from the Hugging Face hub, saved once as JSON Lines for the token store."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmprep.data.sources import cache_dir
from llmprep.files import atomic_path


def hub_text_file(dataset: str, config: str | None, split: str, text_field: str) -> Path:
    """A ``.jsonl`` file in the cache with one ``{"text": ...}`` document per dataset record.

    Fetched once with ``datasets.load_dataset`` (which needs a network, or the datasets cache),
    then reused; each record stays its own document, separated by ``<|endoftext|>`` in the store.
    Line ``n`` is record ``n - 1``, so an error about a line points at its record: an empty row
    (a missing value reads as ``None``) is written as ``""``, and the token store skips it.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(p for p in (dataset, config, split) if p))
    target = cache_dir() / "hub" / f"{name}.{text_field}.jsonl"
    if target.is_file():
        return target
    from datasets import load_dataset

    try:
        records = load_dataset(dataset, config, split=split)
    except Exception as err:
        raise RuntimeError(
            f"data.hf_dataset={dataset!r} (config {config!r}, split {split!r}) could not be "
            f"loaded from the Hugging Face hub: {err}. Offline, save the texts to files and use "
            "`data=text_files data.paths=[...]`."
        ) from err
    if text_field not in records.column_names:
        raise ValueError(
            f"data.hf_text_field={text_field!r} is not a column of {dataset}: "
            f"{records.column_names}"
        )
    with atomic_path(target) as temp, open(temp, "w", encoding="utf-8") as out:
        for text in records[text_field]:
            out.write(json.dumps({"text": "" if text is None else text}) + "\n")
    return target
