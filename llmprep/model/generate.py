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
    if idx.dim() != 2 or idx.shape[1] == 0 or idx.is_floating_point():
        raise ValueError(
            f"idx must be integer token ids of shape [batch, time>0], got {idx.dtype} "
            f"{list(idx.shape)}"
        )
    check(max_new_tokens >= 0, "max_new_tokens", ">= 0", max_new_tokens)
    check(0.0 <= temperature < float("inf"), "temperature", "a finite number >= 0", temperature)
    check(top_k is None or top_k >= 1, "top_k", ">= 1 or None", top_k)
    check(top_p is None or 0.0 < top_p <= 1.0, "top_p", "in (0, 1] or None", top_p)
    context_length = getattr(getattr(model, "config", None), "context_length", None)
    if not is_int(context_length):
        raise TypeError(
            f"generate needs a model with an integer config.context_length, got "
            f"{type(model).__name__} with context_length={context_length!r}"
        )
    pad = eos_id if pad_id is None else pad_id
    cache = KVCache() if use_cache else None
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    with evaluating(model):
        for _ in range(max_new_tokens):
            if cache is not None and len(cache) >= context_length:
                cache.reset()  # the window slides on: re-run it with a fresh cache
            fresh = cache is None or len(cache) == 0
            step_input = idx[:, -context_length:] if fresh else idx[:, -1:]
            logits = model(step_input) if cache is None else model(step_input, kv_cache=cache)
            logits = logits[:, -1, :]
            if temperature == 0.0:
                next_id = logits.argmax(dim=-1)
            else:
                probs = _filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
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
    check(batch_size >= 1, "batch_size", "positive", batch_size)
    groups: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        groups[length].append(index)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]
