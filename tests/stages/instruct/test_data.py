"""Instruction data: the book's split, its collate rules, bucketing, clear errors on bad files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from llmprep.data.errors import DataError
from llmprep.data.records import read_records
from llmprep.stages.instruct.data import (
    InstructDataModule,
    collate_instruct,
    field_names,
    has_target,
)
from llmprep.tokenizer import get_tokenizer

CONF = ROOT / "conf"
E = 50256
X = -100


def records(n: int) -> list[dict[str, str]]:
    return [
        {"instruction": f"Repeat {i}.", "input": "" if i % 2 else f"x{i}", "output": f"{i} " * i}
        for i in range(n)
    ]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- collate: the book's custom_collate_fn rules on hand-written batches ---------------------


def test_collate_pads_appends_one_end_token_and_ignores_the_rest() -> None:
    batch = collate_instruct([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]])
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5],
        [6, 7, E, E, E],
        [8, 9, 10, E, E],
    ]
    assert batch["targets"].tolist() == [
        [2, 3, 4, 5, E],
        [7, E, X, X, X],
        [9, 10, E, X, X],
    ]
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long


def test_collate_mask_prompt_ignores_targets_that_predict_prompt_tokens() -> None:
    # Prompts: [1, 2, 3] and [6]. Target j predicts token j + 1, so row 0 ignores the targets
    # predicting 2 and 3 but keeps the one predicting 4, the first response token.
    batch = collate_instruct([[1, 2, 3, 4, 5], [6, 7]], prompt_lengths=[3, 1], mask_prompt=True)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, E, E, E]]
    assert batch["targets"].tolist() == [[X, X, 4, 5, E], [7, E, X, X, X]]


def test_collate_truncates_after_padding_like_the_book() -> None:
    batch = collate_instruct(
        [[1, 2, 3, 4, 5], [6, 7]], prompt_lengths=[2, 1], mask_prompt=True, max_length=3
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [6, 7, E]]
    assert batch["targets"].tolist() == [[X, 3, 4], [7, E, X]]


def test_collate_never_masks_an_end_token_inside_an_example() -> None:
    batch = collate_instruct([[1, E, 2], [3]])
    assert batch["targets"].tolist() == [[E, 2, E], [E, X, X]]


def test_collate_mask_prompt_needs_the_prompt_lengths() -> None:
    with pytest.raises(ValueError, match="prompt_lengths"):
        collate_instruct([[1, 2]], mask_prompt=True)


# --- the book's data and split ---------------------------------------------------------------


def test_book_data_splits_935_110_55_in_file_order(mirror: Path, tmp_path: Path) -> None:
    data = json.loads((mirror / "instruction-data.json").read_text(encoding="utf-8"))
    dm = InstructDataModule(output_dir=str(tmp_path / "splits"))
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.records[split]) for split in ("train", "test", "val")] == [935, 110, 55]
    assert dm.records["train"] == data[:935]
    assert dm.records["test"] == data[935:1045]
    assert dm.records["val"] == data[1045:]
    assert (len(dm.train_dataloader()), len(dm.val_dataloader())) == (116, 7)  # 935 // 8, 55 / 8
    # The saved splits read back as a split folder with the same records.
    saved = InstructDataModule(path=str(tmp_path / "splits"))
    saved.setup()
    assert saved.records["test"] == dm.records["test"]
    assert saved.records["val"] == dm.records["val"]


def test_mask_prompt_leaves_exactly_the_response_and_end_token_in_the_loss(
    tmp_path: Path,
) -> None:
    path = write_json(tmp_path / "d.json", records(20))
    dm = InstructDataModule(path=str(path), mask_prompt=True, batch_size=4, split=(0.5, 0.25))
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    tokenizer = get_tokenizer()
    for row, record in enumerate(dm.records["val"][:4]):
        kept = batch["targets"][row][batch["targets"][row] != X].tolist()
        assert tokenizer.decode(kept) == record["output"] + "<|endoftext|>"


def test_examples_are_cut_to_the_model_context(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", records(20))
    dm = InstructDataModule(path=str(path), max_length=1024, context_length=6, batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["targets"].shape == (4, 6)


def test_has_target_says_whether_collate_leaves_a_target() -> None:
    for length, prompt, limit, mask in itertools.product(range(5), range(5), range(1, 6), [0, 1]):
        if prompt > length:
            continue
        targets = collate_instruct(
            [list(range(1, length + 1))], [prompt], max_length=limit, mask_prompt=bool(mask)
        )["targets"]
        assert has_target(length, prompt, limit, bool(mask)) == bool((targets != X).any())


def long_prompt_records(n: int) -> list[dict[str, str]]:
    """``records(n)`` where every even record's input is far longer than 64 tokens."""
    return [
        {**r, "input": "many words " * 60} if i % 2 == 0 else r for i, r in enumerate(records(n))
    ]


@pytest.mark.parametrize("bucket", [False, True])
def test_training_examples_without_a_target_token_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bucket: bool
) -> None:
    path = write_json(tmp_path / "d.json", long_prompt_records(20))
    dm = InstructDataModule(
        path=str(path),
        mask_prompt=True,
        max_length=64,
        batch_size=1,
        bucket=bucket,
        split=(0.5, 0.25),
    )
    with caplog.at_level("WARNING"):
        dm.setup()
    assert len(dm.records["train"]) == 10 and len(dm.datasets["train"]) == 5
    assert "5 of 10 training examples have no target token" in caplog.text
    batches = list(dm.train_dataloader())
    assert len(batches) == 5
    assert all((batch["targets"] != X).any(dim=1).all() for batch in batches)


def test_a_training_split_left_without_targets_names_the_file_and_settings(
    tmp_path: Path,
) -> None:
    path = write_json(tmp_path / "d.json", long_prompt_records(20)[::2])
    dm = InstructDataModule(path=str(path), mask_prompt=True, max_length=64, split=(0.5, 0.25))
    with pytest.raises(DataError, match=r"d\.json.*all 5 training examples.*max_length=64"):
        dm.setup()
    kept = InstructDataModule(path=str(path), mask_prompt=False, max_length=64, split=(0.5, 0.25))
    kept.setup()
    assert len(kept.datasets["train"]) == 5


# --- other inputs ----------------------------------------------------------------------------


def test_jsonl_with_renamed_fields_and_no_input(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"q": f"Question {i}?", "a": f"Answer {i}.", "id": i}) for i in range(3)]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    got = read_records(path, field_names({"instruction": "q", "input": None, "output": "a"}))[1]
    assert got[2] == {"instruction": "Question 2?", "input": "", "output": "Answer 2."}
    assert len(got) == 3


def test_split_folder_is_used_as_given(tmp_path: Path) -> None:
    data = records(9)
    write_json(tmp_path / "train.json", data[:5])
    (tmp_path / "validation.jsonl").write_text(
        "\n".join(json.dumps(r) for r in data[5:7]), encoding="utf-8"
    )
    write_json(tmp_path / "test.json", data[7:])
    dm = InstructDataModule(path=str(tmp_path), batch_size=2)
    dm.setup()
    assert [dm.records[s] for s in ("train", "val", "test")] == [data[:5], data[5:7], data[7:]]


def test_split_folder_missing_a_split_names_it(tmp_path: Path) -> None:
    write_json(tmp_path / "train.json", records(3))
    write_json(tmp_path / "test.json", records(3))
    with pytest.raises(DataError, match="val/validation"):
        InstructDataModule(path=str(tmp_path)).setup()


def test_hub_dataset_offline_says_to_pass_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"tatsu-lab/alpaca.*data\.path="):
        InstructDataModule(path="hf:tatsu-lab/alpaca").prepare_data()


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown prompt style"):
        InstructDataModule(prompt_style="nope")
    with pytest.raises(ValueError, match=r"data\.split"):
        InstructDataModule(split=(0.9, 0.2))
    with pytest.raises(ValueError, match="unknown field 'prompt'"):
        InstructDataModule(fields={"prompt": "q"})


# --- bucketing -------------------------------------------------------------------------------


def test_bucketed_training_loader_through_the_data_module(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", records(40))
    dm = InstructDataModule(path=str(path), bucket=True, batch_size=4, split=(0.5, 0.25))
    dm.setup()
    loader = dm.train_dataloader()
    lengths = [len(ids) for ids, _ in dm.datasets["train"]]
    assert loader.sampler.lengths == lengths
    assert sum(b["input_ids"].shape[0] for b in loader) == 20


# --- configs ---------------------------------------------------------------------------------


def compose_data(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=list(overrides)).data


def test_data_configs_build_the_data_module(tmp_path: Path) -> None:
    book = instantiate(compose_data("+data=instruction_book"), context_length=128)
    assert (book.path, book.limit, book.style.name, book.fractions) == (
        "instruction-data",
        128,
        "alpaca",
        {"train": 0.85, "test": 0.10},
    )
    alpaca = compose_data("+data=alpaca")
    assert (alpaca.path, alpaca.max_length, alpaca.batch_size) == ("hf:tatsu-lab/alpaca", 512, 4)
    path = write_json(tmp_path / "d.json", records(20))
    mine = compose_data("+data=instruct_file", f"data.path={path}", "data.fields.input=null")
    dm = instantiate(mine, context_length=64)
    dm.setup()
    assert dm.records["train"][0]["input"] == ""


def test_instruct_file_config_requires_a_path() -> None:
    with pytest.raises((MissingMandatoryValue, HydraException), match="path"):
        instantiate(compose_data("+data=instruct_file"), context_length=64)
