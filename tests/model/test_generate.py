from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import model_size
from torch import nn

from llmprep.model import GPT
from llmprep.model.generate import cut_at_stop, generate, left_pad, stream

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


def one_at_a_time(model: nn.Module, prompts: list[list[int]], steps: int, **kwargs) -> list:
    """Each prompt's new tokens, generated alone."""
    return [
        generate(model, torch.tensor([p]), steps, **kwargs)[0, len(p) :].tolist() for p in prompts
    ]


def batched(model: nn.Module, prompts: list[list[int]], steps: int, **kwargs) -> list:
    """Each prompt's new tokens, generated in one left-padded batch."""
    idx, mask = left_pad(prompts, pad_id=7)
    out = generate(model, idx, steps, attention_mask=mask, **kwargs)
    return out[:, idx.shape[1] :].tolist()


def test_prompts_of_eight_lengths_batch_to_their_greedy_tokens_alone(model: GPT) -> None:
    torch.manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (9, 1, 4, 12, 2, 7, 5, 10)]
    assert batched(model, prompts, 4) == one_at_a_time(model, prompts, 4)


def test_a_batch_crossing_the_window_gives_the_uncached_and_the_single_tokens(model: GPT) -> None:
    torch.manual_seed(2)
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (3, 14, 8, 11)]
    cached = batched(model, prompts, 12)  # the 14-token row slides after 2 steps, the 3 never
    assert cached == batched(model, prompts, 12, use_cache=False)
    assert cached == one_at_a_time(model, prompts, 12)


def test_left_pad_puts_prompts_at_the_right_end_and_refuses_empty_ones() -> None:
    idx, mask = left_pad([[4, 5, 6], [8]], pad_id=0)
    assert idx.tolist() == [[4, 5, 6], [0, 0, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        left_pad([[1], []])
    with pytest.raises(ValueError, match="must end every row with a real token"):
        generate(Successor(), idx, 2, attention_mask=mask.flip(1))


def letters(ids: list[int]) -> str:
    """Successor's tokens as text: 0 -> 'a', 1 -> 'b', ..."""
    return "".join(chr(ord("a") + i) for i in ids)


def test_each_row_stops_at_its_own_stop_string() -> None:
    prompt = torch.tensor([[0], [3], [6]])
    out = generate(Successor(), prompt, 6, pad_id=9, stop=("de", "h"), decode=letters)
    # row 0 writes b c d e (stops at "de"), row 1 e f g h (stops at "h"), row 2 h at once;
    # all have stopped after four steps, so generation ends there
    assert out[:, 1:].tolist() == [[1, 2, 3, 4], [4, 5, 6, 7], [7, 9, 9, 9]]
    assert [cut_at_stop(letters(row[1:]), ("de", "h")) for row in out.tolist()] == ["bc", "efg", ""]
    with pytest.raises(ValueError, match="stop strings need decode"):
        generate(Successor(), prompt, 2, stop=("x",))
    with pytest.raises(ValueError, match="stop must be a sequence of non-empty strings"):
        generate(Successor(), prompt, 2, stop="x", decode=letters)


def test_streaming_yields_the_tokens_of_generate_as_they_come(model: GPT) -> None:
    prompts = [[3, 1, 4, 1, 5], [9, 2], [6, 5, 3, 5, 8, 9, 7, 9, 3]]
    idx, mask = left_pad(prompts)
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        steps = stream(model, idx, 10, attention_mask=mask)
        first = next(steps)
        assert len(calls) == 1  # the first token comes after one forward, not after all ten
        streamed = torch.stack([first, *steps], dim=1)
    finally:
        hook.remove()
    expected = generate(model, idx, 10, attention_mask=mask)[:, idx.shape[1] :]
    assert torch.equal(streamed, expected)
