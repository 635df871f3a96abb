"""The DPO objective: sequence log-probabilities of responses, and the loss and rewards of pairs.

For a pair, with ``pi`` the policy's and ``ref`` the reference model's log-probability of a
response (its tokens after the prompt, the end token included)::

    h = (pi(chosen) - ref(chosen)) - (pi(rejected) - ref(rejected))
    loss = -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)

with ``eps`` the label smoothing (0: the book's and the DPO paper's loss; above 0, the
"conservative" DPO of TRL's ``sigmoid`` loss, for preferences that are wrong a share ``eps`` of
the time). The rewards are the DPO paper's implicit rewards, ``beta * (pi - ref)`` of each
response, so the margin (chosen reward - rejected reward) is ``beta * h`` and the unsmoothed
loss of a pair is ``-logsigmoid(margin)``: 0.6931 (ln 2) at a margin of 0.

Decision on the reward scale: TRL and the paper scale by ``beta``; the book's notebook reports
``pi - ref`` unscaled. Its "reward margin about 2.0" at ``beta`` 0.1 is a margin of 0.2 here.

A response's log-probability is the ``mean`` of its token log-probabilities (the book) or their
``sum`` (TRL, the paper). The sum is the probability of the whole response, so a long
dispreferred answer is penalised for every token; the mean does not grow with length, which
keeps ``beta`` meaningful across answers of very different lengths but lets the policy lengthen
a preferred answer at no cost.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from llmprep.model import GPT
from llmprep.model.gpt import IGNORE_INDEX

LOGPROBS = ("mean", "sum")
METRICS = ("loss", "chosen_reward", "rejected_reward", "margin", "accuracy")
"""The per-pair figures of :func:`dpo_terms`, logged as ``<split>/<name>``."""


def sequence_logprobs(
    model: GPT, input_ids: torch.Tensor, targets: torch.Tensor, reduction: str
) -> torch.Tensor:
    """The log-probability under ``model`` of each row's targets [B] (``IGNORE_INDEX`` skipped):
    the ``mean`` or the ``sum`` of the token log-probabilities.

    The vocabulary head runs only on the positions with a target (the responses), so the
    ``[B, T, vocab]`` logits of the prompts and the padding are never made.
    """
    if reduction not in LOGPROBS:
        raise ValueError(f"logprob={reduction!r}: expected one of {', '.join(LOGPROBS)}")
    valid = targets != IGNORE_INDEX
    counts = valid.sum(dim=1)
    if not bool((counts > 0).all()):
        raise ValueError("every sequence needs at least one target token to be scored")
    hidden = model.hidden_states(input_ids)[valid]
    logits = model.out_head(hidden).float()
    token_logprobs = -F.cross_entropy(logits, targets[valid], reduction="none")
    rows = valid.nonzero()[:, 0]
    sums = token_logprobs.new_zeros(targets.shape[0]).index_add(0, rows, token_logprobs)
    return sums if reduction == "sum" else sums / counts


class PairTerms(NamedTuple):
    """Per-pair figures [B] of a batch of preference pairs (see the module docstring)."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    margin: torch.Tensor
    accuracy: torch.Tensor


def dpo_terms(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PairTerms:
    """The DPO loss of each pair and its rewards, margin and accuracy (1 where the margin is
    above 0); the rewards carry no gradient. All inputs are [B] sequence log-probabilities."""
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    scaled = beta * (chosen - rejected)
    loss = -(1 - label_smoothing) * F.logsigmoid(scaled) - label_smoothing * F.logsigmoid(-scaled)
    chosen_reward, rejected_reward = beta * chosen.detach(), beta * rejected.detach()
    margin = chosen_reward - rejected_reward
    return PairTerms(loss, chosen_reward, rejected_reward, margin, (margin > 0).float())
