"""Text continuation for a GPT: greedy decoding or sampling, with a key/value cache.

Sliding past the context window: GPT-2's positions are absolute, so once a sequence is longer
than ``context_length`` every new token shifts the positions of the whole window and the cached
keys/values go stale. From then on each step re-runs the last ``context_length`` tokens with a
fresh cache. That costs what the uncached path costs, but keeps cached and uncached generation
token-for-token identical, which is what the cache promises.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from llmprep.model.gpt import KVCache
from llmprep.model.modes import evaluating


def _context_length(model: nn.Module) -> int:
    """The window ``model`` reads, from ``model.config.context_length`` (also reachable through
    wrappers such as peft's, which forward attribute lookups to the wrapped GPT)."""
    context_length = getattr(getattr(model, "config", None), "context_length", None)
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise TypeError(
            f"generate needs a model with an integer config.context_length, got "
            f"{type(model).__name__} with context_length={context_length!r}"
        )
    return context_length


def _check_arguments(
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> None:
    if idx.dim() != 2 or idx.shape[1] == 0 or idx.is_floating_point():
        raise ValueError(
            f"idx must be integer token ids of shape [batch, time>0], got {idx.dtype} "
            f"{list(idx.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0.0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def _next_input(idx: torch.Tensor, cache: KVCache | None, context_length: int) -> torch.Tensor:
    """The tokens to feed this step: only the newest one while the cache has room, otherwise the
    last ``context_length`` tokens (the cache, if any, emptied first)."""
    if cache is not None and 0 < len(cache) < context_length:
        return idx[:, -1:]
    if cache is not None:
        cache.reset()
    return idx[:, -context_length:]


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


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token id per row of ``logits`` [B, vocab]."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = _filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    pad_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue each row of ``idx`` [B, T] by up to ``max_new_tokens`` tokens; returns the prompt
    and its continuation, [B, T + n].

    ``temperature=0`` is greedy decoding (``top_k``/``top_p`` are then irrelevant); otherwise
    tokens are sampled from the softmax of logits / temperature, restricted to the ``top_k`` most
    likely and to the ``top_p`` nucleus. Sampling draws from ``generator`` (or the global RNG), so
    a seeded generator or ``torch.manual_seed`` reproduces it. A row stops at its own ``eos_id``
    (which is kept); its later positions hold ``pad_id`` (default ``eos_id``), and generation ends
    early once every row has stopped. ``model`` is any module with ``config.context_length`` whose
    ``forward(idx, kv_cache=...)`` returns logits [B, T, vocab], e.g. ``GPT`` or a peft wrapper
    around it; ``use_cache=False`` calls plain ``forward(idx)``. The model runs in eval mode
    without gradients, and its modes are restored afterwards (``evaluating``).
    """
    _check_arguments(idx, max_new_tokens, temperature, top_k, top_p)
    context_length = _context_length(model)
    pad = eos_id if pad_id is None else pad_id
    cache = KVCache() if use_cache else None
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    with evaluating(model):
        for _ in range(max_new_tokens):
            step_input = _next_input(idx, cache, context_length)
            logits = model(step_input) if cache is None else model(step_input, kv_cache=cache)
            next_id = _pick(logits[:, -1, :], temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id = torch.where(done, torch.full_like(next_id, pad), next_id)
                done |= next_id == eos_id
            idx = torch.cat([idx, next_id[:, None].to(idx.dtype)], dim=1)
            if done.all():
                break
    return idx


def equal_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal length, in groups of at most ``batch_size``, first-seen order.

    Our GPT has absolute positions and no attention mask, so prompts padded to a common length
    would see the padding; prompts of the same length batch exactly as they run alone.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    groups: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        groups[length].append(index)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]
