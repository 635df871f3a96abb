"""Resumable training data: epoch-keyed orders, loaders that continue mid-epoch, bucketing."""

from __future__ import annotations

import pytest
import torch

from llmprep.data.resumable import EpochSampler, ResumableDataModule, ResumableLoader


def loader(size: int = 23, batch_size: int = 4, seed: int = 5, **kwargs) -> ResumableLoader:
    """Batches of the indices ``0 .. size - 1`` themselves, so a batch shows which were drawn."""
    sampler = EpochSampler(size, seed, batch_size, kwargs.pop("lengths", None))
    return ResumableLoader(
        list(range(size)), sampler, batch_size, kwargs.pop("drop_last", True), **kwargs
    )


def epoch(batches: ResumableLoader, number: int) -> list[list[int]]:
    batches.sampler.set_epoch(number)
    return [b.tolist() for b in batches]


def test_each_epoch_has_its_own_order_drawn_from_the_seed_and_the_epoch() -> None:
    first, again, other_seed = loader(), loader(), loader(seed=6)
    orders = [epoch(first, 0), epoch(first, 1), epoch(first, 0)]
    assert orders[0] == orders[2] == epoch(again, 0)
    assert orders[0] != orders[1]
    assert orders[0] != epoch(other_seed, 0)
    assert len(orders[0]) == 5 and len({i for b in orders[0] for i in b}) == 20


def test_a_loader_restored_from_a_saved_position_yields_the_rest_of_that_epoch() -> None:
    uninterrupted = loader()
    expected = epoch(uninterrupted, 0) + epoch(uninterrupted, 1)

    interrupted = loader()
    seen = []
    for batch in interrupted:
        seen.append(batch.tolist())
        if len(seen) == 2:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches": 2}

    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b.tolist() for b in resumed]
    assert seen + rest + epoch(resumed, 1) == expected
    assert resumed.state_dict() == {"epoch": 1, "batches": 5}


def test_a_position_at_the_end_of_an_epoch_skips_nothing_of_the_next() -> None:
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batches": 5})
    assert epoch(resumed, 1) == epoch(loader(), 1)


def test_worker_processes_resume_at_the_same_batch() -> None:
    resumed = loader(num_workers=1)
    resumed.load_state_dict({"epoch": 1, "batches": 3})
    assert epoch(resumed, 1) == epoch(loader(), 1)[3:]


class ListData(ResumableDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.data = list(range(23))

    def train_dataloader(self) -> ResumableLoader:
        return self.resume_loader(
            ResumableLoader(self.data, EpochSampler(23, 5), 4, drop_last=True)
        )


def test_a_data_module_restored_from_its_checkpoint_entry_resumes_its_training_loader() -> None:
    """The data module's entry is restored before Lightning builds any loader, unlike the fit
    loop's loader states once ``configure_optimizers`` asked for the stepping batches."""
    saved = ListData()
    batches = iter(saved.train_dataloader())
    seen = [next(batches).tolist() for _ in range(3)]
    state = saved.state_dict()

    restored = ListData()
    restored.load_state_dict(state)
    assert seen + [b.tolist() for b in restored.train_dataloader()] == epoch(loader(), 0)
    assert ListData().state_dict() == {}


def test_processes_split_one_epoch_order_and_each_resumes_its_own_share() -> None:
    shares = [EpochSampler(11, seed=1, num_replicas=2, rank=rank) for rank in (0, 1)]
    for share in shares:
        share.set_epoch(2)
    indices = [list(share) for share in shares]
    assert len(indices[0]) == len(indices[1]) == len(shares[0]) == 6
    assert sorted(set(indices[0] + indices[1])) == list(range(11))
    shares[1].start = 4
    assert list(shares[1]) == indices[1][4:]
    assert list(shares[1]) == indices[1]  # a start applies to one pass only


def test_bucketed_batches_hold_similar_lengths_and_only_the_last_is_partial() -> None:
    lengths = [(i * 37) % 101 for i in range(203)]
    sampler = EpochSampler(203, seed=1, batch_size=8, lengths=lengths, pool_batches=4)
    batches = ResumableLoader(list(range(203)), sampler, 8, drop_last=False)
    drawn = [b.tolist() for b in batches]
    assert sorted(i for b in drawn for i in b) == list(range(203))
    assert len(drawn) == len(batches) == 26
    assert [len(b) for b in drawn] == [8] * 25 + [3]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in drawn)
    in_order = [lengths[s : s + 8] for s in range(0, 203, 8)]
    assert spread < 0.5 * sum(max(b) - min(b) for b in in_order)
    dropped = ResumableLoader(list(range(203)), sampler, 8, drop_last=True)
    assert [b.tolist() for b in dropped] == drawn[:25]


def test_bucketed_orders_change_with_the_epoch_and_resume_like_plain_ones() -> None:
    lengths = list(range(50))
    bucketed = loader(50, lengths=lengths)
    first, second = epoch(bucketed, 0), epoch(bucketed, 1)
    assert first != second
    resumed = loader(50, lengths=lengths)
    resumed.load_state_dict({"epoch": 1, "batches": 7})
    assert epoch(resumed, 1) == second[7:]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size and pool_batches must be positive"):
        EpochSampler(10, 1, batch_size=0)
    with pytest.raises(ValueError, match="3 lengths for a dataset of 10"):
        EpochSampler(10, 1, lengths=[1, 2, 3])


def test_making_an_iterator_draws_nothing_from_the_global_generator() -> None:
    """Dropout draws from the global generator: an epoch's start must not move it."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch(loader(), 0)
    assert torch.equal(torch.rand(3), expected)
