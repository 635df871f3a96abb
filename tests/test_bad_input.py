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


def _check_fails_cleanly(result, run: Path, cache_before: set[Path], *expected: str) -> str:
    """The command failed with one error line holding ``expected`` and left nothing half-done."""
    errors = [line for line in result.err.splitlines() if "[ERROR]" in line]
    assert result.code == 1, result.err[-3000:]
    assert "Traceback" not in result.err + result.out, result.err[:3000]
    assert len(errors) == 1, result.err[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    assert (run / "train.log").read_text().count(errors[0].split(" - ", 1)[1]) == 1
    cache = Path(os.environ["LLMPREP_CACHE"])
    temps = [p for p in _files(run, cache) if ".tmp" in p.name]
    assert temps == []
    assert not (run / "checkpoints").exists()
    assert _files(cache) - cache_before == set() or all(".tmp" not in p.name for p in _files(cache))
    return errors[0]


CONFIG_CASES = {
    "max_steps not a number": (["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "integer"]),
    "lr not a number": (["optim.lr=fast"], ["optim.lr='fast'", "number > 0"]),
    "lr negative": (["optim.lr=-1"], ["optim.lr=-1", "number > 0"]),
    "batch size zero": (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    "stride zero": (["data.stride=0"], ["data.stride=0", ">= 1 or null"]),
    "lora rank negative": (["lora.rank=-1"], ["lora.rank=-1", ">= 0"]),
    "unknown stage in registry": (["stage.name=distill"], ["stage.name='distill'", "pretrain"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_values_are_named(cli, tmp_path, case):
    overrides, expected = CONFIG_CASES[case]
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli("train.py", *TINY, *overrides, f"hydra.run.dir={run}")
    _check_fails_cleanly(result, run, before, *expected)


def test_a_corpus_too_short_for_one_window_says_what_works(cli, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("Every effort moves you. " * 10, encoding="utf-8")
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli(
        "train.py", *TINY, "data=text_files", f"data.paths=[{corpus}]", f"hydra.run.dir={run}"
    )
    line = _check_fails_cleanly(result, run, before, "tokens, too few for one window")
    assert "largest data.max_length that works is" in line


def test_a_missing_data_file_is_named(cli, tmp_path):
    run = tmp_path / "run"
    missing = tmp_path / "nowhere.txt"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli(
        "train.py", *TINY, "data=text_files", f"data.paths=[{missing}]", f"hydra.run.dir={run}"
    )
    _check_fails_cleanly(result, run, before, str(missing))


def test_a_bad_record_names_file_record_and_field(cli, tmp_path):
    records = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(20)]
    del records[3]["output"]
    data = tmp_path / "broken.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli(
        "train.py",
        "stage=instruct",
        "init_from=null",
        *TINY,
        "data=instruct_file",
        f"data.path={data}",
        f"hydra.run.dir={run}",
    )
    _check_fails_cleanly(result, run, before, str(data), "record 3", "output")


def test_a_named_source_missing_from_mirror_and_network_is_named(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPREP_MIRROR", str(tmp_path / "empty-mirror"))
    monkeypatch.setenv("LLMPREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    result = cli("train.py", *TINY, "data=shakespeare", f"hydra.run.dir={run}")
    _check_fails_cleanly(result, run, set(), "tinyshakespeare", "LLMPREP_MIRROR")


def test_missing_tokenizer_files_name_the_cache_variable(cli, tmp_path, monkeypatch):
    import tiktoken.registry

    from llmprep.tokenizer import get_tokenizer

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "no-tiktoken"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    get_tokenizer.cache_clear()
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    try:
        result = cli("train.py", *TINY, f"hydra.run.dir={run}")
    finally:
        get_tokenizer.cache_clear()
    _check_fails_cleanly(result, run, before, "TIKTOKEN_CACHE_DIR=", "vocab.bpe")


def test_a_hub_id_offline_says_how_to_point_init_from_elsewhere(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli(
        "train.py",
        *TINY,
        "init_from=openai-community/gpt2",
        "trainer.max_steps=1",
        f"hydra.run.dir={run}",
    )
    _check_fails_cleanly(result, run, before, "openai-community/gpt2", "init_from")


def _corrupt(tmp_path: Path, tiny_ckpt: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"definitely not a checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_ckpt.read_bytes()[:4096])
    return {"garbage": garbage, "truncated": truncated}


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
@pytest.mark.parametrize("setting", ["ckpt_path", "init_from"])
def test_a_corrupt_checkpoint_is_named_before_fitting(cli, tmp_path, tiny_ckpt, kind, setting):
    path = _corrupt(tmp_path, tiny_ckpt)[kind]
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli("train.py", *TINY, f"{setting}={path}", f"hydra.run.dir={run}")
    line = _check_fails_cleanly(result, run, before, f"{setting}=", path.name)
    assert "corrupt or truncated checkpoint" in line and "weights_only" not in line


def test_resuming_with_another_architecture_names_both(cli, tmp_path, tiny_ckpt):
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli(
        "train.py",
        "model=gpt2-mini",
        "logger=none",
        f"ckpt_path={tiny_ckpt}",
        f"hydra.run.dir={run}",
    )
    _check_fails_cleanly(result, run, before, "gpt2-tiny", "model=gpt2-mini")
    assert "size mismatch" not in result.err


def test_resuming_a_missing_checkpoint_is_named(cli, tmp_path):
    run = tmp_path / "run"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli("train.py", *TINY, f"ckpt_path={tmp_path / 'gone.ckpt'}", f"hydra.run.dir={run}")
    _check_fails_cleanly(result, run, before, "gone.ckpt", "no such file")


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_evaluate_names_a_corrupt_checkpoint(cli, tmp_path, tiny_ckpt, kind):
    path = _corrupt(tmp_path, tiny_ckpt)[kind]
    run = tmp_path / "eval"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli("evaluate.py", "stage=pretrain", f"ckpt_path={path}", f"hydra.run.dir={run}")
    (run / "train.log").write_text((run / "evaluate.log").read_text())
    _check_fails_cleanly(result, run, before, "ckpt_path=", "corrupt or truncated checkpoint")


def test_evaluate_never_instantiates_what_a_checkpoint_names(cli, tmp_path, tiny_ckpt):
    """A crafted checkpoint that passes ``weights_only=True`` but names a function to call as its
    data module: evaluate refuses it and the function never runs."""
    pwned = tmp_path / "pwned.txt"
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["data"] = {
        "_target_": "logging.basicConfig",
        "filename": str(pwned),
    }
    ckpt["hyper_parameters"]["config"]["stage"]["task"] = "logging.basicConfig"
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    run = tmp_path / "eval"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli("evaluate.py", "stage=pretrain", f"ckpt_path={crafted}", f"hydra.run.dir={run}")
    (run / "train.log").write_text((run / "evaluate.log").read_text())
    _check_fails_cleanly(result, run, before, "logging.basicConfig", "never instantiates")
    assert not pwned.exists()


def test_evaluate_names_the_stage_that_trained_a_checkpoint(cli, tmp_path, tiny_ckpt):
    run = tmp_path / "eval"
    before = _files(Path(os.environ["LLMPREP_CACHE"]))
    result = cli("evaluate.py", "stage=classify", f"ckpt_path={tiny_ckpt}", f"hydra.run.dir={run}")
    (run / "train.log").write_text((run / "evaluate.log").read_text())
    _check_fails_cleanly(result, run, before, "trained by stage 'pretrain'", "stage=pretrain")


def test_with_hydra_full_error_the_traceback_is_shown(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from llmprep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim\.lr='fast'"):
        cli("train.py", *TINY, "optim.lr=fast", f"hydra.run.dir={tmp_path / 'run'}")
