from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import model_size
from torch import nn

from llmprep.model import GPT
from llmprep.model.generate import generate

VOCAB = 101


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    config = model_size("gpt2-tiny", vocab_size=VOCAB, context_length=16)
    gpt = GPT(config).eval()
    with torch.no_grad():  # larger weights than the init's, so greedy picks are clear-cut
        for p in gpt.parameters():
            p.normal_(0.0, 0.3)
    return gpt


class Successor(nn.Module):
    """Always predicts the token after the last one (mod vocabulary): a known trajectory."""

    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.config = SimpleNamespace(context_length=64)
        self.vocab = vocab

    def forward(self, idx: torch.Tensor, kv_cache: object = None, **_: object) -> torch.Tensor:
        return 10.0 * F.one_hot((idx + 1) % self.vocab, self.vocab).float()


class Fixed(nn.Module):
    """Next-token probabilities [0.4, 0.3, 0.2, 0.1] whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(context_length=64)
        self.logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()

    def forward(self, idx: torch.Tensor, kv_cache: object = None, **_: object) -> torch.Tensor:
        return self.logits.expand(*idx.shape, 4)


def reference_greedy(model: GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """The book's loop: crop to the window, run the model, append the argmax."""
    with torch.no_grad():
        for _ in range(steps):
            logits = model(idx[:, -model.config.context_length :])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_greedy_without_cache_is_the_books_loop(model: GPT) -> None:
    prompt = torch.randint(0, VOCAB, (2, 5))
    expected = reference_greedy(model, prompt, 30)
    assert torch.equal(generate(model, prompt, 30, use_cache=False), expected)


def test_cache_gives_the_same_tokens_past_the_window(model: GPT) -> None:
    prompt = torch.randint(0, VOCAB, (2, 20))  # longer than the 16-token window from the start
    out_cached = generate(model, prompt, 30)
    assert out_cached.shape == (2, 50)
    assert torch.equal(out_cached, generate(model, prompt, 30, use_cache=False))
    short = prompt[:, :3]
    assert torch.equal(generate(model, short, 40), reference_greedy(model, short, 40))


def test_top_k_1_and_a_tiny_nucleus_are_greedy(model: GPT) -> None:
    prompt = torch.randint(0, VOCAB, (2, 4))
    greedy = generate(model, prompt, 12)
    assert torch.equal(generate(model, prompt, 12, temperature=1.0, top_k=1), greedy)
    assert torch.equal(generate(model, prompt, 12, temperature=1.0, top_p=1e-6), greedy)


def test_seeded_sampling_is_reproducible(model: GPT) -> None:
    prompt = torch.randint(0, VOCAB, (2, 4))

    def sample(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return generate(model, prompt, 20, temperature=1.5, generator=gen)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    torch.manual_seed(3)
    first = generate(model, prompt, 20, temperature=1.5, top_k=20)
    torch.manual_seed(3)
    assert torch.equal(first, generate(model, prompt, 20, temperature=1.5, top_k=20))


@pytest.mark.parametrize(
    ("top_k", "top_p", "allowed"),
    [(None, None, {0, 1, 2, 3}), (2, None, {0, 1}), (None, 0.5, {0, 1}), (3, 0.95, {0, 1, 2})],
)
def test_filtering_keeps_only_the_allowed_tokens(
    top_k: int | None, top_p: float | None, allowed: set[int]
) -> None:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.zeros(400, 1, dtype=torch.long)
    out = generate(Fixed(), prompt, 1, temperature=1.0, top_k=top_k, top_p=top_p, generator=gen)
    assert set(out[:, 1].tolist()) == allowed


def test_each_row_stops_at_its_own_eos_and_is_padded() -> None:
    prompt = torch.tensor([[3], [0]])
    out = generate(Successor(), prompt, 10, eos_id=5, pad_id=9)
    assert out.tolist() == [[3, 4, 5, 9, 9, 9], [0, 1, 2, 3, 4, 5]]
    padded_with_eos = generate(Successor(), prompt, 10, eos_id=5)
    assert padded_with_eos[0].tolist() == [3, 4, 5, 5, 5, 5]


def test_without_eos_it_runs_the_full_length() -> None:
    out = generate(Successor(), torch.tensor([[8]]), 4)
    assert out.tolist() == [[8, 9, 0, 1, 2]]
    assert generate(Successor(), torch.tensor([[8]]), 0).tolist() == [[8]]


def test_training_mode_is_restored_and_no_graph_is_kept(model: GPT) -> None:
    model.train()
    try:
        out = generate(model, torch.zeros(1, 2, dtype=torch.long), 3)
        assert model.training
        assert not out.requires_grad
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"idx": torch.zeros(4, dtype=torch.long)}, "idx must be integer token ids"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    arguments = {"idx": torch.zeros(1, 2, dtype=torch.long), "max_new_tokens": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        generate(Successor(), **arguments)


def test_model_without_context_length_is_refused() -> None:
    with pytest.raises(TypeError, match=r"config\.context_length"):
        generate(nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long), 1)


def test_cache_feeds_one_token_a_step_then_slides_the_window(model: GPT) -> None:
    fed: list[int] = []
    hook = model.register_forward_pre_hook(lambda _, args: fed.append(args[0].shape[1]))
    try:
        generate(model, torch.zeros(1, 14, dtype=torch.long), 5)
    finally:
        hook.remove()
    assert fed == [14, 1, 1, 16, 16]
