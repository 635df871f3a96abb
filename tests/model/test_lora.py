import copy
import csv
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fit_checkpoint, run_cli

from llmprep.model import GPT, GPTConfig
from llmprep.model.generate import generate
from llmprep.model.gpt import Linear
from llmprep.model.init import build_model, load_checkpoint_model
from llmprep.model.lora import LoraSettings, apply_lora, merge_lora
from llmprep.stages.pretrain.task import PretrainTask
from llmprep.training.optim import build_adamw
from llmprep.training.task import GPTTask

TINY = GPTConfig(vocab_size=101, context_length=32, emb_dim=32, n_layers=2, n_heads=2)
OPTIM = {"lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "constant"}
ALL_LINEAR = ["query", "key", "value", "out_proj", "fc", "proj", "out_head"]


def run_config(lora: dict | None = None, init_from: str | None = None, model=TINY) -> dict:
    """The plain run config a task receives, reduced to what these tests' tasks read."""
    return {
        "optim": OPTIM,
        "lora": lora or {"rank": 0},
        "init_from": init_from,
        "model": {"name": "test", **asdict(model)},
        "sample": {"prompt": "a", "max_new_tokens": 1, "temperature": 0.0, "top_k": None},
    }


class ClassifierTask(GPTTask):
    """A stage that swaps in a two-class head, as the classify stage does."""

    def adapt_model(self, model: GPT) -> GPT:
        model.out_head = torch.nn.Linear(model.config.emb_dim, 2)
        return model

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return F.cross_entropy(self.model(inputs)[:, -1, :], targets[:, -1] % 2)


def tokens(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (n, 16), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model: torch.nn.Module) -> None:
    """Non-zero adapters (LoRA's B starts at zero), so merging has something to merge."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)


def assert_merged_computes_the_same(
    merged: torch.nn.Module, adapted: torch.nn.Module, idx: torch.Tensor
) -> None:
    """Both models' logits agree, computed in float64 (on copies): what is left is the one
    rounding of each merged float32 weight, not float32 sums regrouped by the merge, whose
    rounding grows with the logits and changes with the thread count and BLAS."""
    with torch.no_grad():
        ours, theirs = (copy.deepcopy(m).double()(idx) for m in (merged, adapted))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def trainable(task: torch.nn.Module) -> int:
    return sum(p.numel() for p in task.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full (non-LoRA) checkpoint of a briefly trained tiny model: the pretrained base."""
    torch.manual_seed(0)
    task = PretrainTask(run_config(), asdict(TINY))
    return fit_checkpoint(task, tmp_path_factory.mktemp("base") / "base.ckpt", tokens(), steps=2)


def lora_task(base_ckpt: Path, cls=PretrainTask, **lora) -> GPTTask:
    """A LoRA task on the tiny base, built the way ``from_config`` builds it."""
    config = run_config({"rank": 4, "alpha": 8, **lora}, init_from=str(base_ckpt))
    model = build_model(config["model"], config["init_from"])
    return cls(config, asdict(model.config), model=model)


def test_book_appendix_e_classifier_count():
    """gpt2-small, 2-class head, rank 16, alpha 16, every Linear incl. the head: 2,666,528."""
    with torch.device("meta"):
        task = ClassifierTask(run_config({"rank": 16, "alpha": 16}), asdict(GPTConfig()))
    assert trainable(task) == 2_666_528
    assert "out_head" in task.lora.settings.targets


def test_lm_head_count_and_default_targets():
    """With the 50,257-way head listed: 3,470,608; by default the LM head is not adapted."""
    with torch.device("meta"):
        listed = GPTTask(
            run_config({"rank": 16, "alpha": 16, "targets": ALL_LINEAR}), asdict(GPTConfig())
        )
        default = GPTTask(run_config({"rank": 16, "alpha": 16}), asdict(GPTConfig()))
    assert trainable(listed) == 3_470_608
    assert trainable(default) == 3_470_608 - (768 * 16 + 16 * 50257)
    assert "out_head" not in default.lora.settings.targets


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"lora.targets: 'qkv' matches no Linear"):
        GPTTask(run_config({"rank": 4, "targets": ["qkv"]}), asdict(TINY))
    with pytest.raises(ValueError, match=r"lora.rank must be a positive integer"):
        LoraSettings.from_config({"rank": -1})
    with pytest.raises(ValueError, match=r"unknown lora setting\(s\) ranks"):
        LoraSettings.from_config({"rank": 4, "ranks": 8})
    assert LoraSettings.from_config({"rank": 0, "alpha": 16}) is None


def test_optimizer_step_changes_only_adapters_and_an_unadapted_new_head(base_ckpt: Path):
    task = lora_task(base_ckpt, ClassifierTask, targets=["query", "value"])
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    optimizer = build_adamw(task.named_parameters(), OPTIM)
    data = tokens(4)
    task.training_step((data, data), 0).backward()
    optimizer.step()
    changed = {n for n, p in task.named_parameters() if not torch.equal(p, before[n])}
    assert changed
    assert all("lora_" in n or n.startswith("model.out_head.") for n in changed)
    assert {"model.out_head.weight", "model.out_head.bias"} <= changed


def test_merged_model_computes_what_the_adapted_one_does(base_ckpt: Path):
    task = lora_task(base_ckpt, targets=ALL_LINEAR)
    randomize_adapters(task.model)
    task.model.double()  # merging regroups sums: compare far above float32's rounding noise
    idx = tokens(2)
    with torch.no_grad():
        adapted = task.model(idx)
    adapted_text = generate(task.model, idx[:, :4], max_new_tokens=6)
    merged = merge_lora(task.model)
    assert type(merged.out_head) is Linear  # the plain vocabulary layer again, no adapter
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), adapted)
    assert torch.equal(generate(merged, idx[:, :4], max_new_tokens=6), adapted_text)


def test_merging_an_adapted_tied_head_leaves_the_embeddings_alone():
    model = GPT(GPTConfig(**{**asdict(TINY), "tie_weights": True}))
    embeddings = model.tok_emb.weight.detach().clone()
    apply_lora(model, LoraSettings(rank=2, alpha=2, targets=("out_head",)))
    randomize_adapters(model)
    merge_lora(model)
    assert torch.equal(model.tok_emb.weight, embeddings)
    assert not torch.equal(model.out_head.weight, embeddings)
    assert model.config.tie_weights is False


def test_adapter_checkpoint_is_small_and_reloads_its_base(base_ckpt: Path, tmp_path: Path):
    task = lora_task(base_ckpt)
    path = fit_checkpoint(task, tmp_path / "lora.ckpt", tokens(), steps=2)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["state_dict"]
    assert all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["lora"]["base"]["init_from"] == str(base_ckpt.resolve())
    assert path.stat().st_size < 0.25 * base_ckpt.stat().st_size

    restored = PretrainTask.load_from_checkpoint(path, weights_only=True)
    idx = tokens(2)
    with torch.no_grad():
        torch.testing.assert_close(restored.model(idx), task.model(idx))
        merged = load_checkpoint_model(path)
        assert_merged_computes_the_same(merged, task.model, idx)


def test_changed_base_is_refused(base_ckpt: Path, tmp_path: Path):
    path = fit_checkpoint(lora_task(base_ckpt), tmp_path / "lora.ckpt", tokens(), steps=2)
    other = tmp_path / "other.ckpt"
    fit_checkpoint(PretrainTask(run_config(), asdict(TINY)), other, tokens(), steps=1)
    ckpt = torch.load(path, weights_only=True)
    ckpt["lora"]["base"]["init_from"] = str(other)
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"trained on init_from=.*sha256.*only fit the base"):
        PretrainTask.load_from_checkpoint(path, weights_only=True)
    with pytest.raises(ValueError, match=r"only fit the base"):
        load_checkpoint_model(path)


def test_random_base_is_stored_and_classifier_head_kept(tmp_path: Path):
    torch.manual_seed(0)
    task = ClassifierTask(run_config({"rank": 4, "alpha": 8}), asdict(TINY), model=GPT(TINY))
    path = fit_checkpoint(task, tmp_path / "cls.ckpt", tokens(), steps=2)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["lora"]["base"] is None
    assert "model.tok_emb.weight" in ckpt["state_dict"]
    idx = tokens(2)
    restored = ClassifierTask.load_from_checkpoint(path, weights_only=True)
    merged = load_checkpoint_model(path)
    assert merged.out_head.out_features == 2
    with torch.no_grad():
        torch.testing.assert_close(restored.model(idx), task.model(idx))
        assert_merged_computes_the_same(merged, task.model, idx)


def test_lora_settings_must_match_the_checkpoint(base_ckpt: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"trained without LoRA but this run has lora.rank=4"):
        lora_task(base_ckpt).on_load_checkpoint(torch.load(base_ckpt, weights_only=True))
    path = fit_checkpoint(lora_task(base_ckpt), tmp_path / "lora.ckpt", tokens(), steps=1)
    plain = PretrainTask(run_config(), asdict(TINY))
    with pytest.raises(ValueError, match=r"holds LoRA adapters \(rank 4\) but this run has"):
        plain.on_load_checkpoint(torch.load(path, weights_only=True))


def read_metrics(run: Path) -> list[dict[str, str]]:
    with next(run.rglob("metrics.csv")).open() as f:
        return list(csv.DictReader(f))


def test_resume_a_lora_run_from_the_command_line(tmp_path: Path):
    run = tmp_path / "run"
    common = [
        "model=gpt2-tiny",
        "lora.rank=4",
        "logger=csv",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "test_after_fit=false",
        f"hydra.run.dir={run}",
    ]
    first = run_cli("train.py", *common, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    resumed = run_cli("train.py", *common, "trainer.max_epochs=2", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["lora"]["rank"] == 4
    steps = [int(r["step"]) for r in read_metrics(run) if r.get("train/loss")]
    assert max(steps) == 3
