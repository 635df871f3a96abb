"""Text continuation for a GPT: greedy decoding or sampling, for batches of prompts of any
lengths, with a preallocated key/value cache, stop conditions and a streaming form.

Batches: prompts of different lengths are left-padded (:func:`left_pad`) and run with their
attention mask, which hides the padding and numbers each row's positions from its own first
token, so a row computes what it computes alone. Every row's last column is a real token, so
the vocabulary head runs on the last position only.

Sliding past the context window: GPT-2's positions are absolute, so once a sequence is longer
than ``context_length`` every new token shifts the positions of the whole window and the cached
keys/values go stale. From then on each step re-runs the last ``context_length`` columns with a
fresh cache. That costs what the uncached path costs, but keeps cached and uncached generation
token-for-token identical, which is what the cache promises. In a batch the window is shared:
it slides once the longest row fills it, and then holds the last ``context_length`` tokens of
every row that long and the whole of every shorter row (with its padding masked), which is
exactly the input each row has alone. The shorter rows are then re-run instead of extended from
the cache: the same numbers up to float rounding, at the cost of the re-run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from llmprep.model.config import check, is_int
from llmprep.model.gpt import KVCache
from llmprep.model.modes import evaluating


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """``logits`` with every token outside the top ``top_k`` and outside the nucleus (the
    fewest most likely tokens whose probabilities sum to at least ``top_p``) set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


Sampling = tuple[float, "int | None", "float | None", "torch.Generator | None"]
"""One row's ``(temperature, top_k, top_p, generator)``."""


def _per_row(value: Any, batch: int, name: str) -> list[Any]:
    """``value`` for each of ``batch`` rows: a list or tuple is taken as one value per row."""
    if not isinstance(value, list | tuple):
        return [value] * batch
    if len(value) != batch:
        raise ValueError(f"{name}: {len(value)} values for a batch of {batch} rows")
    return list(value)


def _row_sampling(
    batch: int, temperature: Any, top_k: Any, top_p: Any, generator: Any
) -> list[Sampling]:
    """Each row's sampling settings, checked; any of them may be given per row."""
    rows = list(
        zip(
            _per_row(temperature, batch, "temperature"),
            _per_row(top_k, batch, "top_k"),
            _per_row(top_p, batch, "top_p"),
            _per_row(generator, batch, "generator"),
            strict=True,
        )
    )
    for t, k, p, _ in rows:
        check(
            isinstance(t, int | float) and 0.0 <= t < float("inf"),
            "temperature",
            "a finite number >= 0",
            t,
        )
        check(k is None or (is_int(k) and k >= 1), "top_k", ">= 1 or None", k)
        check(p is None or 0.0 < p <= 1.0, "top_p", "in (0, 1] or None", p)
    return rows


def _choose(logits: torch.Tensor, sampling: list[Sampling]) -> torch.Tensor:
    """The next token of each row of ``logits`` [B, vocab]: the argmax of a greedy row, a draw
    from a sampled row's filtered softmax. Rows that share their settings and generator draw
    together in one call; rows with their own generators draw one at a time, each from its own
    generator, so a seeded row samples what it samples alone."""
    first = sampling[0]
    if all(row == first for row in sampling):
        groups = [(list(range(len(sampling))), first)]
    else:
        groups = [([row], settings) for row, settings in enumerate(sampling)]
    next_id = logits.argmax(dim=-1)
    for rows, (temperature, top_k, top_p, generator) in groups:
        if temperature == 0.0:
            continue
        scaled = logits[rows].float() / temperature
        probs = _filter_logits(scaled, top_k, top_p).softmax(dim=-1)
        next_id[rows] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return next_id


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id prompts of any lengths as one batch: ids [B, T] with each prompt at the right end
    after ``pad_id``s, and the attention mask [B, T] (True at the prompt's tokens)."""
    if not prompts:
        raise ValueError("left_pad needs at least one prompt")
    if empty := [i for i, prompt in enumerate(prompts) if len(prompt) == 0]:
        raise ValueError(f"prompt {empty[0]} is empty: generation needs at least one token")
    width = max(len(prompt) for prompt in prompts)
    idx = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    return idx.to(device), mask.to(device)


def stop_index(text: str, stop: Sequence[str]) -> int | None:
    """Where in ``text`` the first of the ``stop`` strings to occur starts; None if none does."""
    found = [at for at in (text.find(s) for s in stop) if at >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (without) the first of the ``stop`` strings in it."""
    at = stop_index(text, stop)
    return text if at is None else text[:at]


def stream(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float | Sequence[float] = 0.0,
    top_k: int | Sequence[int | None] | None = None,
    top_p: float | Sequence[float | None] | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    pad_id: int | None = None,
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
    attention_mask: torch.Tensor | None = None,
    stop: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
) -> Iterator[torch.Tensor]:
    """Continue each row of ``idx`` [B, T] by up to ``max_new_tokens`` tokens, yielding every
    row's next token, [B], as soon as it is chosen (:func:`generate` collects them).

    ``temperature=0`` is greedy decoding (``top_k``/``top_p`` are then irrelevant); otherwise
    tokens are sampled from the softmax of logits / temperature, restricted to the ``top_k`` most
    likely and to the ``top_p`` nucleus. Sampling draws from ``generator`` (or the global RNG), so
    a seeded generator or ``torch.manual_seed`` reproduces it (a batch draws for all its rows at
    once, so a row's sample depends on its batch). Greedy rows of a batch give the tokens they
    give alone. Each of ``temperature``, ``top_k``, ``top_p`` and ``generator`` may instead be a
    list with one value per row (a server batching requests with their own settings): rows with
    their own seeded generators then sample what they sample alone.

    Prompts of different lengths come left-padded with their ``attention_mask`` [B, T] (True at
    real tokens; :func:`left_pad` makes both). A row stops at its own ``eos_id`` (which is kept),
    or at the token that completes one of the ``stop`` strings in its continuation as
    ``decode(new ids)`` spells it (the token is kept; :func:`cut_at_stop` cuts the text before
    the string); its later positions hold ``pad_id`` (default ``eos_id``, else 0), and
    generation ends early once every row has stopped.

    ``model`` is any module with ``config.context_length`` whose ``forward(idx, kv_cache=...,
    attention_mask=..., last_only=True)`` returns the last position's logits [B, 1, vocab] as
    ``GPT``'s does (LoRA adapters are injected into it, so an adapted GPT is one);
    ``use_cache=False`` passes ``kv_cache=None`` and re-runs the whole window each step. The
    model runs in eval mode without gradients, and its modes are restored afterwards
    (``evaluating``).

    The arguments are checked when this is called, before the first step runs. A stopped row
    yields ``pad_id`` from the step after its stop on; the iteration ends after
    ``max_new_tokens`` steps or once every row has stopped.
    """
    if idx.dim() != 2 or idx.shape[1] == 0 or idx.is_floating_point():
        raise ValueError(
            f"idx must be integer token ids of shape [batch, time>0], got {idx.dtype} "
            f"{list(idx.shape)}"
        )
    check(max_new_tokens >= 0, "max_new_tokens", ">= 0", max_new_tokens)
    sampling = _row_sampling(idx.shape[0], temperature, top_k, top_p, generator)
    if attention_mask is not None:
        if attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask must have idx's shape {list(idx.shape)}, got "
                f"{list(attention_mask.shape)}"
            )
        attention_mask = attention_mask.to(device=idx.device, dtype=torch.bool)
        if not attention_mask[:, -1].all():
            raise ValueError(
                "attention_mask must end every row with a real token: pad prompts on the left "
                "(left_pad)"
            )
    if isinstance(stop, str) or any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop must be a sequence of non-empty strings, got {stop!r}")
    if stop and decode is None:
        raise ValueError("stop strings need decode, the function from token ids to text")
    context_length = getattr(getattr(model, "config", None), "context_length", None)
    if not is_int(context_length):
        raise TypeError(
            f"generate needs a model with an integer config.context_length, got "
            f"{type(model).__name__} with context_length={context_length!r}"
        )
    return _steps(
        model,
        idx,
        attention_mask,
        max_new_tokens,
        context_length,
        sampling,
        eos_id,
        pad_id if pad_id is not None else eos_id if eos_id is not None else 0,
        use_cache,
        tuple(stop),
        decode,
    )


def _steps(
    model: nn.Module,
    idx: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    context_length: int,
    sampling: list[Sampling],
    eos_id: int | None,
    pad: int,
    use_cache: bool,
    stop: tuple[str, ...],
    decode: Callable[[list[int]], str] | None,
) -> Iterator[torch.Tensor]:
    """The decoding loop behind :func:`stream`, on checked arguments."""
    batch, prompt_width = idx.shape
    width = prompt_width
    ids = idx.new_empty(batch, prompt_width + max_new_tokens)
    ids[:, :prompt_width] = idx
    real = None
    if attention_mask is not None and not attention_mask.all():
        real = torch.ones(batch, prompt_width + max_new_tokens, dtype=torch.bool, device=idx.device)
        real[:, :prompt_width] = attention_mask
    capacity = min(context_length, prompt_width + max_new_tokens)
    cache = KVCache(capacity) if use_cache else None
    done = torch.zeros(batch, dtype=torch.bool, device=idx.device)
    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    for _ in range(max_new_tokens):
        if cache is not None and len(cache) >= context_length:
            cache.reset()  # the window slides on: re-run it with a fresh cache
        if cache is None or len(cache) == 0:
            start = max(0, width - context_length)
            step_input = ids[:, start:width]
            mask = None if real is None else real[:, start:width]
            if mask is not None and mask.all():
                mask = None  # the window has slid past every row's padding
        else:
            step_input, mask = ids[:, width - 1 : width], None
        with evaluating(model):  # per step: between steps the caller sees its own modes
            logits = model(step_input, kv_cache=cache, attention_mask=mask, last_only=True)
        next_id = _choose(logits[:, -1, :], sampling)
        if eos_id is not None or stop:
            next_id = torch.where(done, torch.full_like(next_id, pad), next_id)
        if eos_id is not None:
            done |= next_id == eos_id
        if stop:
            done |= _hit_stop(next_id, done, new_tokens, stop, decode)
        ids[:, width] = next_id
        width += 1
        yield next_id
        if done.all():
            break


def _hit_stop(
    next_id: torch.Tensor,
    done: torch.Tensor,
    new_tokens: list[list[int]],
    stop: tuple[str, ...],
    decode: Callable[[list[int]], str],
) -> torch.Tensor:
    """Which rows' continuations, ``new_tokens`` extended by ``next_id``, now hold one of the
    ``stop`` strings (rows already ``done`` are not looked at)."""
    hit = torch.zeros_like(done)
    for row, (token, finished) in enumerate(zip(next_id.tolist(), done.tolist(), strict=True)):
        if finished:
            continue
        new_tokens[row].append(token)
        if stop_index(decode(new_tokens[row]), stop) is not None:
            hit[row] = True
    return hit


def generate(
    model: nn.Module, idx: torch.Tensor, max_new_tokens: int, **settings: Any
) -> torch.Tensor:
    """The prompt ``idx`` [B, T] and its continuation, [B, T + n]: :func:`stream`'s steps (with
    its keyword ``settings``) collected."""
    steps = stream(model, idx, max_new_tokens, **settings)
    return torch.cat([idx, *(step[:, None].to(idx.dtype) for step in steps)], dim=1)
