import copy
import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fit_checkpoint, model_size
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel, pipeline

from llmprep.export import export_classifier, main
from llmprep.model import GPT, GPTConfig
from llmprep.model.init import build_model
from llmprep.stages.pretrain.task import PretrainTask
from llmprep.tokenizer import get_tokenizer
from llmprep.training.task import GPTTask

TINY = GPTConfig(vocab_size=101, context_length=32, emb_dim=32, n_layers=2, n_heads=2)
LABELS = ["ham", "spam"]
FILES = ("config.json", "model.safetensors")
HF_FOLDER = (
    *FILES,
    "generation_config.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
)
"""What the export of a model with GPT-2's vocabulary holds."""
PROMPT = "Every effort moves you"


def run_config(
    lora: dict | None = None, init_from: str | None = None, model: GPTConfig = TINY
) -> dict:
    return {
        "optim": {"lr": 5e-2, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "constant"},
        "lora": lora or {"rank": 0},
        "init_from": init_from,
        "model": {"name": "test", **asdict(model)},
        "stage": {"name": "test", "pooling": "last"},
    }


class ClassifierTask(GPTTask):
    """A classify-like stage: a new two-class head and ``label_names`` as a hyperparameter."""

    def __init__(self, config, model_config, label_names, model=None) -> None:
        super().__init__(config, model_config, model)

    def adapt_model(self, model: GPT) -> GPT:
        model.out_head = torch.nn.Linear(model.config.emb_dim, len(self.hparams["label_names"]))
        return model

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return F.cross_entropy(self.model(inputs)[:, -1, :], targets[:, -1] % 2)


def tokens(n: int = 8) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (n, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def base_ckpt(folder: Path) -> Path:
    torch.manual_seed(0)
    task = PretrainTask(run_config(), asdict(TINY))
    return fit_checkpoint(task, folder / "base.ckpt", tokens(), steps=3)


def hf_logits(out_dir: Path, idx: torch.Tensor) -> torch.Tensor:
    """The exported model's logits in float64, as ``float64_logits``."""
    model = GPT2LMHeadModel.from_pretrained(out_dir).eval().double()
    with torch.no_grad():
        return model(idx).logits


def read_classifier(folder: Path) -> tuple[GPT, dict]:
    """An exported classifier as its ``config.json`` describes it: our GPT with a head of its
    class count, holding the tensors of its ``model.safetensors``."""
    meta = json.loads((folder / "config.json").read_text())
    model = GPT(GPTConfig(**meta["model_config"]))
    model.out_head = torch.nn.Linear(model.config.emb_dim, meta["num_classes"], meta["head_bias"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model, meta


def float64_logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """``model``'s logits computed in float64 (on a copy, in eval mode). Comparing them leaves
    only the one rounding of each exported float32 weight: float32 sums, grouped otherwise by
    another implementation or by merged adapters, round by an amount that grows with the logits
    and changes with the thread count and BLAS."""
    with torch.no_grad():
        return copy.deepcopy(model).eval().double()(idx)


def test_lora_language_model_exports_merged_to_transformers(base_ckpt: Path, folder: Path):
    lora = {"rank": 4, "alpha": 8, "targets": ["query", "value", "fc"]}
    config = run_config(lora, str(base_ckpt))
    model = build_model(config["model"], config["init_from"])
    task = PretrainTask(config, asdict(model.config), model=model)
    ckpt = fit_checkpoint(task, folder / "lora.ckpt", tokens(), steps=3)
    out = folder / "lora_hf"
    assert main([f"ckpt_path={ckpt}", f"out_dir={out}"]) == 0
    idx = tokens(2)
    torch.testing.assert_close(
        hf_logits(out, idx), float64_logits(task.model, idx), atol=1e-5, rtol=0
    )


def test_plain_checkpoint_exports_to_transformers(base_ckpt: Path, folder: Path):
    out = folder / "plain_hf"
    assert main([f"ckpt_path={base_ckpt}", f"out_dir={out}"]) == 0
    task = PretrainTask.load_from_checkpoint(base_ckpt, weights_only=True).eval()
    idx = tokens(2)
    torch.testing.assert_close(
        hf_logits(out, idx), float64_logits(task.model, idx), atol=1e-5, rtol=0
    )


def our_greedy_text(ckpt: Path, prompt: str, max_new_tokens: int) -> str:
    """Our own greedy continuation of ``prompt`` by the model of ``ckpt`` (the task's
    ``continuations``: ``generate`` + our tokenizer), cut at ``<|endoftext|>``."""
    task = PretrainTask.load_from_checkpoint(ckpt, weights_only=True).eval()
    return task.continuations([get_tokenizer().encode(prompt)], max_new_tokens)[0]


@pytest.fixture(scope="module")
def gpt2_vocab_ckpt(folder: Path) -> Path:
    """A pretrain checkpoint of a tiny GPT with GPT-2's whole vocabulary, trained one step."""
    config = model_size("gpt2-tiny", context_length=32)
    torch.manual_seed(0)
    task = PretrainTask(run_config(model=config), asdict(config))
    ids = torch.randint(0, config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    return fit_checkpoint(task, folder / "gpt2_vocab.ckpt", ids, steps=1)


def test_exported_folder_generates_our_greedy_text_in_a_transformers_pipeline(
    gpt2_vocab_ckpt: Path, tmp_path: Path
):
    """Offline (conftest sets ``HF_HUB_OFFLINE=1``): the folder alone is the whole model."""
    out = tmp_path / "hf"
    assert main([f"ckpt_path={gpt2_vocab_ckpt}", f"out_dir={out}"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(HF_FOLDER)
    generator = pipeline("text-generation", model=str(out), device="cpu")
    hf = generator(PROMPT, do_sample=False, max_new_tokens=12, return_full_text=False)
    ours = our_greedy_text(gpt2_vocab_ckpt, PROMPT, 12)
    assert ours.strip()  # the pipeline without tokenizer files returned no new text
    assert hf[0]["generated_text"] == ours


def test_export_without_tiktoken_files_names_them_and_writes_nothing(
    gpt2_vocab_ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    assert main([f"ckpt_path={gpt2_vocab_ckpt}", f"out_dir={out}"]) == 1
    err = capsys.readouterr().err
    assert "error: the gpt2 tokenizer needs vocab.bpe" in err and "TIKTOKEN_CACHE_DIR" in err
    assert not out.exists()


def test_lora_classifier_exports_with_its_head_and_labels(base_ckpt: Path, folder: Path):
    config = run_config({"rank": 4, "alpha": 8}, str(base_ckpt))
    model = build_model(config["model"], config["init_from"])
    task = ClassifierTask(config, asdict(model.config), LABELS, model=model)
    ckpt = fit_checkpoint(task, folder / "cls.ckpt", tokens(), steps=3)
    out = folder / "cls_out"
    assert main([f"ckpt_path={ckpt}", f"out_dir={out}"]) == 0
    exported, meta = read_classifier(out)
    assert meta["format"] == "llmprep-classifier"
    assert meta["label_names"] == LABELS
    assert meta["num_classes"] == 2
    assert meta["pooling"] == "last"
    idx = tokens(2)
    expected = float64_logits(task.model, idx)
    torch.testing.assert_close(float64_logits(exported, idx), expected, atol=1e-5, rtol=0)


def test_exported_files_get_the_umask_permissions_of_a_plainly_written_file(
    base_ckpt: Path, tmp_path: Path
):
    classifier = GPT(TINY)
    classifier.out_head = torch.nn.Linear(TINY.emb_dim, 2)
    previous = os.umask(0o022)
    try:
        assert main([f"ckpt_path={base_ckpt}", f"out_dir={tmp_path / 'hf'}"]) == 0
        export_classifier(classifier, tmp_path / "cls", LABELS)
    finally:
        os.umask(previous)
    modes = {
        str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode)
        for path in tmp_path.rglob("*")
        if path.is_file()
    }
    assert set(modes) == {f"{kind}/{name}" for kind in ("hf", "cls") for name in FILES}
    assert set(modes.values()) == {0o644}


def test_bad_command_lines_say_what_is_wrong(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    with pytest.raises(SystemExit):
        main([f"out_dir={tmp_path}"])
    assert "missing ckpt_path=" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ckpt=x.ckpt", f"out_dir={tmp_path}"])
    assert "unknown key 'ckpt'; the keys are ckpt_path, out_dir" in capsys.readouterr().err
    assert main([f"ckpt_path={tmp_path / 'none.ckpt'}", f"out_dir={tmp_path}"]) == 1
    assert "none.ckpt': no such file" in capsys.readouterr().err
