"""The DPO task: ln 2 against its own reference, the loss and rewards against a hand computation,
the LoRA reference, checkpoints without the reference, and a real instruct -> DPO chain."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmprep.errors import CheckpointError
from llmprep.inference import load_model
from llmprep.model import GPT, GPTConfig
from llmprep.model.init import load_checkpoint_model
from llmprep.stages import load_task
from llmprep.stages.dpo.data import collate_pairs
from llmprep.stages.dpo.loss import sequence_logprobs
from llmprep.stages.dpo.task import REFERENCE_KEY, DPOSettings, DPOTask

TINY = GPTConfig(
    vocab_size=50257, context_length=32, emb_dim=32, n_layers=1, n_heads=2, dropout=0.0
)
OPTIM = {
    "lr": 1e-2,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "warmup_steps": 0,
    "schedule": "constant",
}


def config(rank: int = 0, **stage: object) -> dict:
    return {
        "stage": {"name": "dpo", "beta": 0.1, "logprob": "mean", **stage},
        "optim": OPTIM,
        "lora": {"rank": rank, "alpha": 8},
        "init_from": None,
    }


def task_of(rank: int = 0, seed: int = 0, **stage: object) -> DPOTask:
    torch.manual_seed(seed)
    return DPOTask(config(rank, **stage), asdict(TINY), model=GPT(TINY))


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Three pairs of random tokens: prompts of 3-5 tokens, responses of 1-6."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, 1000, (n,), generator=g).tolist()

    items = []
    for i in range(3):
        prompt = ids(3 + i)
        items.append((prompt + ids(1 + 2 * i), len(prompt), prompt + ids(6 - i), len(prompt)))
    return collate_pairs(items)


def hand_logprobs(model: GPT, batch: dict[str, torch.Tensor], reduction: str) -> list[float]:
    """Each row's response log-probability from the full logits, one position at a time."""
    with torch.no_grad():
        logp = F.log_softmax(model(batch["input_ids"]).double(), dim=-1)
    rows = []
    for r, targets in enumerate(batch["targets"]):
        values = [logp[r, t, int(y)].item() for t, y in enumerate(targets) if y != -100]
        rows.append(sum(values) / (len(values) if reduction == "mean" else 1))
    return rows


def test_against_its_own_reference_the_loss_is_ln2_and_the_margins_0() -> None:
    for rank in (0, 4):
        terms = task_of(rank).pair_terms(batch())
        assert terms.loss.tolist() == pytest.approx([math.log(2)] * 3, abs=1e-7)
        assert terms.margin.tolist() == terms.chosen_reward.tolist() == [0.0] * 3
        assert terms.accuracy.tolist() == [0.0] * 3


@pytest.mark.parametrize(("reduction", "smoothing"), [("mean", 0.0), ("sum", 0.0), ("mean", 0.2)])
def test_loss_and_rewards_equal_the_formula_on_the_same_logprobs(
    reduction: str, smoothing: float
) -> None:
    beta = 0.5
    task = task_of(beta=beta, logprob=reduction, label_smoothing=smoothing)
    task.reference = GPT(TINY).eval()  # another model, so the log-ratios are not 0
    data = batch()
    terms = task.pair_terms(data)
    pi, ref = (
        hand_logprobs(task.model, data, reduction),
        hand_logprobs(task.reference, data, reduction),
    )
    for i in range(3):
        chosen, rejected = pi[i] - ref[i], pi[3 + i] - ref[3 + i]
        z = beta * (chosen - rejected)
        log_sigmoid = -math.log1p(math.exp(-z))
        log_sigmoid_neg = -math.log1p(math.exp(z))
        loss = -(1 - smoothing) * log_sigmoid - smoothing * log_sigmoid_neg
        assert terms.loss[i].item() == pytest.approx(loss, rel=1e-5)
        assert terms.chosen_reward[i].item() == pytest.approx(beta * chosen, rel=1e-4, abs=1e-6)
        assert terms.rejected_reward[i].item() == pytest.approx(beta * rejected, rel=1e-4, abs=1e-6)
        assert terms.margin[i].item() == pytest.approx(z, rel=1e-4, abs=1e-6)
        assert terms.accuracy[i].item() == float(z > 0)


def test_sequence_logprobs_need_a_target_in_every_row() -> None:
    data = batch()
    data["targets"][1] = -100
    with pytest.raises(ValueError, match="at least one target"):
        sequence_logprobs(GPT(TINY), data["input_ids"], data["targets"], "mean")


def test_with_lora_the_reference_stays_the_base_model_while_the_policy_moves() -> None:
    task = task_of(rank=4)
    torch.manual_seed(0)
    base = GPT(TINY).eval()  # the weights task_of(rank=4) started from, without adapters
    assert task.reference is None
    data = batch()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    task.train()
    for _ in range(3):
        optimizer.zero_grad()
        task.pair_terms(data).loss.mean().backward()
        optimizer.step()
    with task.reference_model() as reference:
        ref = sequence_logprobs(reference, data["input_ids"], data["targets"], "mean")
    with torch.no_grad():
        before = sequence_logprobs(base, data["input_ids"], data["targets"], "mean")
        policy = sequence_logprobs(task.model.eval(), data["input_ids"], data["targets"], "mean")
    assert torch.allclose(ref, before, rtol=0, atol=1e-6)
    assert not torch.allclose(policy, before)
    assert all(p.requires_grad for n, p in task.named_parameters() if "lora_" in n)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"stage.beta must be a number > 0, got 0"):
        DPOSettings(beta=0)
    with pytest.raises(ValueError, match=r"stage.logprob must be mean or sum, got 'max'"):
        DPOSettings(logprob="max")
    with pytest.raises(ValueError, match=r"stage.label_smoothing must be a number in \[0, 0.5\)"):
        DPOSettings(label_smoothing=0.5)


# --- the instruct -> DPO chain (tests/stages/dpo/conftest.py) ----------------------------------


def metrics(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "csv" / "metrics.csv").open()))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


def test_dpo_from_an_instruct_checkpoint_raises_the_margin_and_lowers_the_loss(chain) -> None:
    rows = metrics(chain.dpo)
    train_loss, train_margin = column(rows, "train/loss"), column(rows, "train/margin")
    assert len(train_loss) == 12  # 27 pairs in batches of 4, last partial dropped: 6 x 2 epochs
    assert train_loss[0] == pytest.approx(math.log(2), abs=1e-3)  # dropout moves it slightly
    assert train_loss[-1] < math.log(2) and train_margin[-1] > 0
    val_loss, val_margin = column(rows, "val/loss"), column(rows, "val/margin")
    assert len(val_loss) == 2 and val_loss[-1] < math.log(2) and val_margin[-1] > 0
    assert column(rows, "val/accuracy")[-1] == 1.0
    # The rewards logged are beta times the log-ratios, and the margin their difference.
    last = next(r for r in reversed(rows) if r.get("val/margin"))
    difference = float(last["val/chosen_reward"]) - float(last["val/rejected_reward"])
    assert float(last["val/margin"]) == pytest.approx(difference, rel=1e-5)
    assert (chain.dpo / "loss.png").stat().st_size > 0


def test_checkpoints_refer_to_the_reference_instead_of_holding_it(chain) -> None:
    path = chain.dpo / "checkpoints" / "best.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert not any(k.startswith("reference.") for k in ckpt["state_dict"])
    assert ckpt[REFERENCE_KEY]["init_from"] == str(chain.start)
    assert ckpt["hyper_parameters"]["prompt_style"] == "phi3"  # taken from the instruct run
    task = load_task(path, "dpo")
    start = load_checkpoint_model(chain.start)
    for name, tensor in start.state_dict().items():
        assert torch.equal(task.reference.state_dict()[name], tensor), name
    tuned = load_checkpoint_model(path)
    assert not torch.equal(tuned.blocks[0].attn.query.weight, start.blocks[0].attn.query.weight)
    used = load_model(str(path), "cpu")  # what generate, chat and serve answer with
    assert used.style.name == "phi3"
    assert torch.equal(used.model.blocks[0].attn.query.weight, tuned.blocks[0].attn.query.weight)


def test_a_changed_reference_file_is_refused(chain, tmp_path: Path) -> None:
    ckpt = torch.load(
        chain.dpo / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    ckpt[REFERENCE_KEY]["sha256"] = "0" * 64
    changed = tmp_path / "changed.ckpt"
    torch.save(ckpt, changed)
    with pytest.raises(CheckpointError, match="tuned against the reference"):
        load_task(changed, "dpo")
