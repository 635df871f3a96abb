"""The bad-input matrix: every data, config and checkpoint mistake a user can make on the command
line ends in one line that names the key, file or value, exit status 1, no traceback, and no
half-written file in the run folder or the cache (see the README's list of these cases)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

TINY = ("model=gpt2-tiny", "logger=none")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real gpt2-tiny pretraining checkpoint (two steps)."""
    from conftest import ROOT, run_cli

    run = tmp_path_factory.mktemp("tiny-run")
    result = run_cli(
        "train.py", *TINY, "trainer.max_steps=2", "test_after_fit=false", f"hydra.run.dir={run}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert ROOT.is_dir()
    return run / "checkpoints" / "last.ckpt"


def _files(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()}


def fails_cleanly(cli, tmp_path: Path, script: str, *args: str, expected: tuple[str, ...]) -> str:
    """Run ``python <script> <args>`` in a fresh run folder; check that it failed with one error
    line holding every ``expected`` text (also in the run's log) and left nothing half-written
    in the run folder or the cache; return that line."""
    run = tmp_path / "run"
    result = cli(script, *args, f"hydra.run.dir={run}")
    errors = [line for line in result.err.splitlines() if "[ERROR]" in line]
    assert result.code == 1, result.err[-3000:]
    assert "Traceback" not in result.err + result.out, result.err[:3000]
    assert len(errors) == 1, result.err[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    log = run / f"{Path(script).stem}.log"
    assert log.read_text().count(errors[0].split(" - ", 1)[1]) == 1
    cache = Path(os.environ["LLMPREP_CACHE"])
    assert [p for p in _files(run, cache) if ".tmp" in p.name] == []
    assert not (run / "checkpoints").exists()
    return errors[0]


CONFIG_CASES = {
    "max_steps not a number": (["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "integer"]),
    "lr not a number": (["optim.lr=fast"], ["optim.lr='fast'", "number > 0"]),
    "lr negative": (["optim.lr=-1"], ["optim.lr=-1", "number > 0"]),
    "batch size zero": (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    "stride zero": (["data.stride=0"], ["data.stride=0", ">= 1 or null"]),
    "lora rank negative": (["lora.rank=-1"], ["lora.rank=-1", ">= 0"]),
    "answer length zero": (
        ["stage=instruct", "init_from=null", "stage.generation.max_new_tokens=0"],
        ["stage.generation.max_new_tokens=0", ">= 1"],
    ),
    "dpo beta zero": (["stage=dpo", "stage.beta=0"], ["stage.beta=0", "number > 0"]),
    "dpo logprob unknown": (
        ["stage=dpo", "stage.logprob=max"],
        ["stage.logprob must be mean or sum", "'max'"],
    ),
    "keep_freed_memory not a boolean": (
        ["hardware.keep_freed_memory=sometimes"],
        ["hardware.keep_freed_memory='sometimes'", "true or false"],
    ),
    "unknown stage in registry": (["stage.name=distill"], ["stage.name='distill'", "pretrain"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_values_are_named(cli, tmp_path, case):
    overrides, expected = CONFIG_CASES[case]
    fails_cleanly(cli, tmp_path, "train.py", *TINY, *overrides, expected=tuple(expected))


def test_a_corpus_too_short_for_one_window_says_what_works(cli, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("Every effort moves you. " * 10, encoding="utf-8")
    args = ("data=text_files", f"data.paths=[{corpus}]")
    line = fails_cleanly(
        cli, tmp_path, "train.py", *TINY, *args, expected=("tokens, too few for one window",)
    )
    assert "largest data.max_length that works is" in line


def test_a_missing_data_file_is_named(cli, tmp_path):
    missing = tmp_path / "nowhere.txt"
    args = ("data=text_files", f"data.paths=[{missing}]")
    fails_cleanly(cli, tmp_path, "train.py", *TINY, *args, expected=(str(missing),))


def test_a_bad_record_names_file_record_and_field(cli, tmp_path):
    records = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(20)]
    del records[3]["output"]
    data = tmp_path / "broken.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    args = ("stage=instruct", "init_from=null", "data=instruct_file", f"data.path={data}")
    fails_cleanly(
        cli, tmp_path, "train.py", *TINY, *args, expected=(str(data), "record 3", "output")
    )


def test_a_preference_record_without_rejected_names_file_record_and_field(cli, tmp_path):
    records = [{"instruction": f"Say {i}.", "chosen": f"{i}", "rejected": "no"} for i in range(20)]
    del records[5]["rejected"]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    args = ("stage=dpo", "data=preference_file", f"data.path={data}", "data.fields.input=null")
    args += ("data.fields.output=null",)
    expected = (str(data), "record 5", "rejected")
    fails_cleanly(cli, tmp_path, "train.py", *TINY, *args, expected=expected)


def test_a_named_source_missing_from_mirror_and_network_is_named(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPREP_MIRROR", str(tmp_path / "empty-mirror"))
    monkeypatch.setenv("LLMPREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = ("tinyshakespeare", "LLMPREP_MIRROR")
    fails_cleanly(cli, tmp_path, "train.py", *TINY, "data=shakespeare", expected=expected)


def test_missing_tokenizer_files_name_the_cache_variable(cli, tmp_path, monkeypatch):
    import tiktoken.registry

    from llmprep.tokenizer import get_tokenizer

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "no-tiktoken"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    get_tokenizer.cache_clear()
    try:
        expected = ("TIKTOKEN_CACHE_DIR=", "vocab.bpe")
        fails_cleanly(cli, tmp_path, "train.py", *TINY, expected=expected)
    finally:
        get_tokenizer.cache_clear()


def test_a_hub_id_offline_says_how_to_point_init_from_elsewhere(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    args = ("init_from=openai-community/gpt2", "trainer.max_steps=1")
    expected = ("openai-community/gpt2", "init_from", "local folder")
    fails_cleanly(cli, tmp_path, "train.py", *TINY, *args, expected=expected)


def _corrupt(tmp_path: Path, tiny_ckpt: Path, kind: str) -> Path:
    """A checkpoint file that is ``garbage`` or the first 4 KiB of a real one (``truncated``)."""
    path = tmp_path / f"{kind}.ckpt"
    content = b"definitely not a checkpoint" if kind == "garbage" else tiny_ckpt.read_bytes()
    path.write_bytes(content[:4096])
    return path


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
@pytest.mark.parametrize("setting", ["ckpt_path", "init_from"])
def test_a_corrupt_checkpoint_is_named_before_fitting(cli, tmp_path, tiny_ckpt, kind, setting):
    path = _corrupt(tmp_path, tiny_ckpt, kind)
    expected = (f"{setting}=", path.name, "corrupt or truncated checkpoint")
    line = fails_cleanly(cli, tmp_path, "train.py", *TINY, f"{setting}={path}", expected=expected)
    assert "weights_only" not in line


def test_resuming_with_another_architecture_names_both(cli, tmp_path, tiny_ckpt):
    args = ("model=gpt2-mini", "logger=none", f"ckpt_path={tiny_ckpt}")
    expected = ("model=gpt2-mini cannot change on resume", "trained with model=gpt2-tiny")
    fails_cleanly(cli, tmp_path, "train.py", *args, expected=expected)


def test_resuming_a_missing_checkpoint_is_named(cli, tmp_path):
    missing = f"ckpt_path={tmp_path / 'gone.ckpt'}"
    fails_cleanly(cli, tmp_path, "train.py", *TINY, missing, expected=("gone.ckpt", "no such file"))


def test_evaluate_without_a_checkpoint_says_it_is_required(cli, tmp_path):
    expected = ("ckpt_path is required", "python evaluate.py ckpt_path=")
    fails_cleanly(cli, tmp_path, "evaluate.py", expected=expected)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_evaluate_names_a_corrupt_checkpoint(cli, tmp_path, tiny_ckpt, kind):
    args = ("stage=pretrain", f"ckpt_path={_corrupt(tmp_path, tiny_ckpt, kind)}")
    expected = ("ckpt_path=", "corrupt or truncated checkpoint")
    fails_cleanly(cli, tmp_path, "evaluate.py", *args, expected=expected)


def test_evaluate_never_instantiates_what_a_checkpoint_names(cli, tmp_path, tiny_ckpt):
    """A crafted checkpoint that passes ``weights_only=True`` but names a function to call as its
    data module and task: evaluate refuses it and the function never runs."""
    pwned = tmp_path / "pwned.txt"
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    config = ckpt["config"]
    config["data"] = {"_target_": "logging.basicConfig", "filename": str(pwned)}
    config["stage"]["task"] = "logging.basicConfig"
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    args = ("stage=pretrain", f"ckpt_path={crafted}")
    expected = ("logging.basicConfig", "never instantiates")
    fails_cleanly(cli, tmp_path, "evaluate.py", *args, expected=expected)
    assert not pwned.exists()


def test_evaluate_names_the_stage_that_trained_a_checkpoint(cli, tmp_path, tiny_ckpt):
    args = ("stage=classify", f"ckpt_path={tiny_ckpt}")
    expected = ("trained by stage 'pretrain'", "stage=pretrain")
    fails_cleanly(cli, tmp_path, "evaluate.py", *args, expected=expected)


def test_with_hydra_full_error_the_traceback_is_shown(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from llmprep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim\.lr='fast'"):
        cli("train.py", *TINY, "optim.lr=fast", f"hydra.run.dir={tmp_path / 'run'}")
