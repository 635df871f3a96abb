"""Sliding next-token windows follow the book's loop over any token container."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from llmprep.data.windows import TokenWindows


def _book_windows(ids: list[int], max_length: int, stride: int) -> list[tuple[list, list]]:
    """The (input, target) pairs of the book's GPTDatasetV1 loop."""
    return [
        (ids[i : i + max_length], ids[i + 1 : i + max_length + 1])
        for i in range(0, len(ids) - max_length, stride)
    ]


@pytest.mark.parametrize(
    ("length", "max_length", "stride"),
    [(20, 4, 1), (20, 4, 4), (20, 4, 3), (20, 4, 7), (21, 4, 4), (9, 8, 1), (30, 5, 10)],
)
def test_windows_match_the_book_loop(length, max_length, stride):
    ids = list(range(100, 100 + length))
    windows = TokenWindows(ids, max_length, stride)
    got = [(x.tolist(), y.tolist()) for x, y in windows]
    assert got == _book_windows(ids, max_length, stride)
    assert len(got) > 0


def test_exactly_one_window_needs_max_length_plus_one_tokens():
    windows = TokenWindows(list(range(5)), max_length=4, stride=1)
    assert len(windows) == 1
    x, y = windows[0]
    assert x.tolist() == [0, 1, 2, 3]
    assert y.tolist() == [1, 2, 3, 4]


def test_corpus_of_max_length_tokens_is_refused_with_counts():
    with pytest.raises(
        ValueError, match=r"corpus has 4 tokens.*max_length=4.*largest data.max_length .* is 3"
    ):
        TokenWindows(list(range(4)), max_length=4, stride=1)


def test_a_one_token_split_says_no_window_fits():
    with pytest.raises(
        ValueError, match=r"validation split has 1 tokens.*no data.max_length works"
    ):
        TokenWindows([7], max_length=4, stride=1, name="validation split")


def test_stride_beyond_max_length_skips_tokens():
    windows = TokenWindows(list(range(12)), max_length=2, stride=5)
    assert [x.tolist() for x, _ in windows] == [[0, 1], [5, 6]]


def test_last_window_ends_where_the_book_loop_does():
    windows = TokenWindows(list(range(11)), max_length=4, stride=3)
    assert len(windows) == 3
    assert windows[-1][1].tolist() == [7, 8, 9, 10]


@pytest.mark.parametrize(("max_length", "stride"), [(0, 1), (4, 0), (-1, 2), (4, 1.5)])
def test_invalid_sizes_are_refused(max_length, stride):
    with pytest.raises(ValueError, match="must be a positive integer"):
        TokenWindows(list(range(50)), max_length, stride)


def test_uint16_memmap_gives_int64_windows_without_loading_the_file(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(60000, 60010, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    windows = TokenWindows(tokens, max_length=4, stride=2)
    assert isinstance(windows.tokens, np.memmap)
    x, y = windows[1]
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.tolist() == [60002, 60003, 60004, 60005]
    assert y.tolist() == [60003, 60004, 60005, 60006]


def test_tensor_list_and_array_inputs_agree():
    ids = list(range(30))
    as_list = TokenWindows(ids, 6, 4)
    as_tensor = TokenWindows(torch.tensor(ids), 6, 4)
    as_array = TokenWindows(np.array(ids, dtype=np.int32), 6, 4)
    for i in range(len(as_list)):
        for other in (as_tensor, as_array):
            assert torch.equal(as_list[i][0], other[i][0])
            assert torch.equal(as_list[i][1], other[i][1])


def test_input_and_target_are_independent_tensors():
    x, y = TokenWindows(list(range(10)), 4, 1)[0]
    y[:] = -100
    assert x.tolist() == [0, 1, 2, 3]


def test_out_of_range_index_raises_index_error():
    windows = TokenWindows(list(range(10)), 4, 4)
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_two_dimensional_tokens_are_refused():
    with pytest.raises(ValueError, match="1-D"):
        TokenWindows(np.zeros((4, 10), dtype=np.int64), 4, 1)


def test_data_loader_batches_windows():
    loader = DataLoader(TokenWindows(list(range(40)), 8, 8), batch_size=2)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (2, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])
