"""Preference data: the book's split, chosen and rejected batched together with response-only
targets, the prompt style of the starting checkpoint, and each kind of bad record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import ROOT, preference_records
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from llmprep.data.errors import DataError
from llmprep.stages.dpo.data import (
    FIELDS,
    PreferenceDataModule,
    checkpoint_style,
    collate_pairs,
)
from llmprep.stages.instruct.prompts import get_style
from llmprep.tokenizer import get_tokenizer

X = -100


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def response_text(targets: torch.Tensor) -> str:
    return get_tokenizer().decode(targets[targets != X].tolist())


def test_book_file_splits_935_110_55_in_file_order_and_skips_its_identical_pairs(
    mirror: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = json.loads((mirror / "instruction-data-with-preference.json").read_text("utf-8"))
    dm = PreferenceDataModule(output_dir=str(tmp_path / "splits"))
    dm.prepare_data()
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    parts = {"train": data[:935], "test": data[935:1045], "val": data[1045:]}
    for split, part in parts.items():
        assert dm.records[split] == [{k: r[k] for k in FIELDS} for r in part]
        distinct = [r for r in part if r["chosen"] != r["rejected"]]
        assert len(dm.datasets[split]) == len(distinct)
    identical = sum(r["chosen"] == r["rejected"] for r in data)
    assert identical == 6  # the book's file: 1,100 records, 6 with nothing to prefer
    warned = [r.getMessage() for r in caplog.records if "identical" in r.getMessage()]
    assert sum(int(m.split()[0]) for m in warned) == identical
    assert json.loads((tmp_path / "splits" / "val.json").read_text()) == dm.records["val"]
    # The first validation pair, decoded: the book's alpaca prompt, then each response + end.
    batch = next(iter(dm.val_dataloader()))
    size = len(batch["input_ids"]) // 2
    first = next(r for r in parts["val"] if r["chosen"] != r["rejected"])
    assert response_text(batch["targets"][0]) == first["chosen"] + "<|endoftext|>"
    assert response_text(batch["targets"][size]) == first["rejected"] + "<|endoftext|>"
    prompt = get_style("alpaca").format_prompt(first["instruction"], first["input"])
    assert get_tokenizer().decode(batch["input_ids"][0].tolist()).startswith(prompt)


def test_collate_puts_chosen_then_rejected_with_only_their_responses_as_targets() -> None:
    # prompt [1, 2, 3]; chosen response [4, 5]; rejected response [6, 7, 8, 9]
    batch = collate_pairs([([1, 2, 3, 4, 5], 3, [1, 2, 3, 6, 7, 8, 9], 3)])
    e = get_tokenizer().eot_id
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, e, e], [1, 2, 3, 6, 7, 8, 9]]
    assert batch["targets"].tolist() == [[X, X, 4, 5, e, X, X], [X, X, 6, 7, 8, 9, e]]
    cut = collate_pairs([([1, 2, 3, 4, 5], 3, [1, 2, 3, 6, 7, 8, 9], 3)], max_length=4)
    assert cut["targets"].tolist() == [[X, X, 4, 5], [X, X, 6, 7]]


def test_prompt_style_defaults_to_the_starting_checkpoints(tmp_path: Path) -> None:
    ckpt = tmp_path / "instruct.ckpt"
    torch.save({"hyper_parameters": {"prompt_style": "phi3"}}, ckpt)
    pretrain = tmp_path / "pretrain.ckpt"
    torch.save({"hyper_parameters": {"model_config": {}}}, pretrain)
    assert checkpoint_style(str(ckpt)) == "phi3"
    assert checkpoint_style(str(pretrain)) == checkpoint_style(None) == "alpaca"
    assert checkpoint_style("openai-community/gpt2") == "alpaca"
    path = write_json(tmp_path / "p.json", preference_records(20))
    assert PreferenceDataModule(str(path), init_from=str(ckpt)).style.name == "phi3"
    chosen = PreferenceDataModule(str(path), init_from=str(ckpt), prompt_style="plain")
    assert chosen.task_settings() == {"prompt_style": "plain"}


def test_renamed_fields_and_no_input_or_output(tmp_path: Path) -> None:
    rows = [
        {"q": r["instruction"], "good": r["chosen"], "bad": r["rejected"]}
        for r in preference_records(20)
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    fields = {
        "instruction": "q",
        "input": None,
        "output": None,
        "chosen": "good",
        "rejected": "bad",
    }
    dm = PreferenceDataModule(str(path), fields=fields, batch_size=4)
    dm.setup()
    assert [len(dm.records[s]) for s in ("train", "test", "val")] == [17, 2, 1]
    assert dm.records["test"][0] == {
        "instruction": rows[17]["q"],
        "input": "",
        "output": "",
        "chosen": rows[17]["good"],
        "rejected": rows[17]["bad"],
    }
    with pytest.raises(ValueError, match=r"data\.fields\.chosen must name a key"):
        PreferenceDataModule(fields={"chosen": None})
    with pytest.raises(ValueError, match="unknown field 'preferred'"):
        PreferenceDataModule(fields={"preferred": "x"})


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda r: r.pop("rejected"), "rejected", "missing"),
        (lambda r: r.update(chosen=None), "chosen", "missing, or null"),
        (lambda r: r.update(chosen="  "), "chosen", "empty chosen"),
        (lambda r: r.update(rejected=""), "rejected", "empty rejected"),
    ],
)
def test_a_bad_record_is_one_error_naming_file_record_and_field(
    tmp_path: Path, edit, field: str, message: str
) -> None:
    data = preference_records(20)
    edit(data[7])
    path = write_json(tmp_path / "bad.json", data)
    dm = PreferenceDataModule(str(path))
    with pytest.raises(DataError) as err:
        dm.setup()
    text = str(err.value)
    assert str(path) in text and "record 7" in text and field in text and message in text


def test_identical_and_truncated_pairs_are_skipped_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = preference_records(20)
    data[2]["rejected"] = data[2]["chosen"]
    data[5]["instruction"] = "word " * 60  # the prompt alone fills the 40 tokens
    path = write_json(tmp_path / "p.json", data)
    dm = PreferenceDataModule(str(path), prompt_style="plain", max_length=40, split=(0.5, 0.25))
    with caplog.at_level(logging.WARNING):
        dm.setup()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("1 of 10 train pairs have identical") and "record 2 of" in m for m in messages
    )
    assert any(
        m.startswith("1 of 10 train pairs lose a whole response") and "record 5 " in m
        for m in messages
    )
    assert len(dm.datasets["train"]) == 8 and len(dm.records["train"]) == 10
    assert [len(dm.datasets[s]) for s in ("test", "val")] == [5, 5]


def test_a_split_left_without_pairs_names_the_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", preference_records(20))
    dm = PreferenceDataModule(str(path), max_length=5)
    with pytest.raises(DataError, match=r"p.json.*the train split has no pair left to score"):
        dm.setup()


def test_data_configs_build_the_data_module(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["stage=dpo", "init_from=null"])
    assert (cfg.data.path, cfg.data.prompt_style, list(cfg.data.split)) == (
        "instruction-data-with-preference",
        None,
        [0.85, 0.10],
    )
    dm = instantiate(cfg.data, context_length=128, output_dir=None)
    assert (dm.limit, dm.style.name, dm.batch_size) == (128, "alpaca", 8)
