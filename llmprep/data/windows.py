"""Sliding windows over a token sequence: the book's next-token (input, target) training pairs."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class TokenWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item ``i`` is ``(tokens[s : s + max_length], tokens[s + 1 : s + max_length + 1])``.

    Windows start at ``s = 0, stride, 2 * stride, ...`` while ``s + max_length < len(tokens)``,
    exactly the book's ``range(0, len(tokens) - max_length, stride)``, so every input position
    has its target. A stride above ``max_length`` skips tokens, as in the book.

    The token array is kept as given (a ``np.memmap`` stays on disk) and each item reads and
    copies only its own window, as two independent int64 tensors, so editing one in place (e.g.
    masking targets) never changes the other.
    """

    def __init__(
        self,
        tokens: np.ndarray | torch.Tensor | Sequence[int],
        max_length: int,
        stride: int,
        name: str = "corpus",
    ) -> None:
        for setting, value in (("max_length", max_length), ("stride", stride)):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{setting} must be a positive integer, got {value!r}")
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        elif not isinstance(tokens, np.ndarray):
            tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"tokens must be a 1-D sequence of integer token ids, "
                f"got shape {tuple(tokens.shape)} of {tokens.dtype}"
            )
        if len(tokens) <= max_length:
            fix = (
                f"the largest data.max_length that works is {len(tokens) - 1}"
                if len(tokens) > 1
                else "no data.max_length works"
            )
            raise ValueError(
                f"the {name} has {len(tokens)} tokens, too few for one window of "
                f"data.max_length={max_length} (a window needs max_length + 1 tokens): {fix}; "
                "use a larger corpus or change data.train_fraction"
            )
        self.tokens = tokens
        self.max_length = int(max_length)
        self.stride = int(stride)
        self._num_windows = (len(tokens) - self.max_length - 1) // self.stride + 1

    def __len__(self) -> int:
        return self._num_windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._num_windows
        if not 0 <= index < self._num_windows:
            raise IndexError(f"window {index} out of range for {self._num_windows} windows")
        start = index * self.stride
        ids = self.tokens[start : start + self.max_length + 1]
        return _long_tensor(ids[:-1]), _long_tensor(ids[1:])


def _long_tensor(ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(ids, dtype=np.int64))


def truncation_limit(context_length: int, max_length: int | None = None) -> int:
    """The most tokens a text keeps: the model's context, or ``max_length`` when shorter (both
    are checked positive before: ``GPTConfig`` and ``validate_config``)."""
    return context_length if max_length is None else min(context_length, max_length)
