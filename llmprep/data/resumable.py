"""Training data that resumes mid-epoch: an order drawn from ``seed + epoch``, a loader that
knows its position in it, and a data module that saves that position in checkpoints.

How Lightning 2.6 resumes a training epoch: the fit loop saves ``state_dict()`` of each training
loader that is ``_Stateful`` (has ``state_dict`` and ``load_state_dict``) and restores its own
batch counters, but never skips batches itself: a plain ``DataLoader`` would start the epoch
over, in a new order. It calls ``set_epoch`` on the sampler at every epoch start, and under DDP
keeps a ``DistributedSampler`` and replaces any other sampler.

It hands the saved state back only to a loader built after the loops are restored, and our
``configure_optimizers`` asks for ``trainer.estimated_stepping_batches``, which builds it before
(Lightning issue #20550). So ``ResumableDataModule`` keeps the loader's position in its own
checkpoint entry, which Lightning restores before it builds any loader, and gives it to the
loader it builds; the loader stays ``_Stateful`` too, so Lightning knows it can resume mid-epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """This process's share of a dataset's indices, in an order drawn from ``seed + epoch``.

    The order is ``torch.randperm`` seeded with ``seed + epoch``, the same in every process and
    run, so a resumed run draws the epoch it stopped in again. With ``lengths`` it is
    length-bucketed: pools of ``pool_batches`` batches of ``batch_size`` are sorted by length
    and sliced into batches, the full batches shuffled and the partial one (at most one) put
    last, so ``drop_last`` drops only that one.

    ``num_replicas`` and ``rank`` default to the initialised process group's, else one process;
    the order is padded and dealt out as ``DistributedSampler`` does. ``start`` skips that many
    of this process's indices in the next pass only (set by ``ResumableLoader``).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        batch_size: int = 1,
        lengths: Sequence[int] | None = None,
        pool_batches: int = 100,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(
                f"batch_size and pool_batches must be positive, got {batch_size}, {pool_batches}"
            )
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"{len(lengths)} lengths for a dataset of {size}")
        if num_replicas is None or rank is None:
            group = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = torch.distributed.get_world_size() if group else 1
            rank = torch.distributed.get_rank() if group else 0
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, seed=seed)
        self.batch_size = batch_size
        self.lengths = list(lengths) if lengths is not None else None
        self.pool_batches = pool_batches
        self.start = 0

    def order(self, epoch: int) -> list[int]:
        """Every index of the dataset once, in epoch ``epoch``'s order (all processes)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        if self.lengths is None:
            return order
        size, pool = self.batch_size, self.batch_size * self.pool_batches
        batches: list[list[int]] = []
        for begin in range(0, len(order), pool):
            chunk = sorted(order[begin : begin + pool], key=self.lengths.__getitem__)
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        partial = [b for b in batches if len(b) < size]
        full = [b for b in batches if len(b) == size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return [index for batch in shuffled + partial for index in batch]

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        if order:
            order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]
        start, self.start = self.start, 0
        return iter(order[self.rank : self.total_size : self.num_replicas][start:])


class ResumableLoader(torch.utils.data.DataLoader):
    """Training batches of an ``EpochSampler`` that Lightning saves and restores mid-epoch.

    ``state_dict()`` is ``{"epoch", "batches"}``: the sampler's epoch and the batches this pass
    has handed out. After ``load_state_dict`` the next pass of that epoch starts at the saved
    batch (at ``batches * batch_size`` indices, since only the last batch can be partial), a
    pass of any other epoch at its beginning; it applies at the pass's first batch, whatever
    ``set_epoch`` Lightning calls in between.

    The loader's generator is seeded with ``seed + epoch`` at each pass, so workers get seeds of
    their epoch and nothing is drawn from the global generator that dropout uses.
    """

    sampler: EpochSampler

    def __init__(
        self,
        dataset: Dataset,
        sampler: EpochSampler,
        batch_size: int,
        drop_last: bool,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_fn,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            generator=torch.Generator(),
        )
        self.batches = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        epoch = self.sampler.epoch
        resume, self._resume = self._resume, None
        self.batches = resume["batches"] if resume and resume["epoch"] == epoch else 0
        self.sampler.start = self.batches * self.batch_size
        self.generator.manual_seed(self.sampler.seed + epoch)
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the data: the epoch and the batches handed out in it."""
        return {"epoch": self.sampler.epoch, "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume epoch ``state_dict["epoch"]`` at batch ``state_dict["batches"]``."""
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
        self.sampler.set_epoch(self._resume["epoch"])


class ResumableDataModule(L.LightningDataModule):
    """A data module whose training loader continues, after a resume, where the saved run was.

    Subclasses hand the training loader they build to :meth:`resume_loader` (or build it with
    :meth:`train_loader`); the checkpoint entry holds its position
    (``{"train_loader": {"epoch", "batches"}}``), which goes to the next loader built.

    It is also the seam between a stage's data and its task: ``output_dir`` is the run folder
    (where drawn splits are saved; ``None`` outside a training run), ``test_splits`` names the
    loaders ``test_dataloader`` returns, and :meth:`task_settings` is what the task must know.
    """

    test_splits: tuple[str, ...] = ("test",)

    def __init__(
        self,
        output_dir: str | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 123,
    ) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._train_loader: ResumableLoader | None = None
        self._train_position: dict[str, int] | None = None

    def train_loader(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = True,
        lengths: Sequence[int] | None = None,
    ) -> ResumableLoader:
        """Training batches of ``dataset`` in an order drawn from ``seed + epoch``, bucketed by
        ``lengths`` when given (``EpochSampler``), resumable mid-epoch (``resume_loader``)."""
        sampler = EpochSampler(len(dataset), self.seed, self.batch_size, lengths)
        loader = ResumableLoader(
            dataset, sampler, self.batch_size, drop_last, collate_fn, self.num_workers
        )
        return self.resume_loader(loader)

    def eval_loader(
        self, dataset: Dataset, collate_fn: Callable[[list[Any]], Any] | None = None
    ) -> DataLoader:
        """Every item of ``dataset`` in order, in batches of ``batch_size``, none dropped."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
        )

    def resume_loader(self, loader: ResumableLoader) -> ResumableLoader:
        """``loader``, set to the restored position when a checkpoint was loaded; from now on its
        position is the one this data module's checkpoint entry holds."""
        if self._train_position is not None:
            loader.load_state_dict(self._train_position)
            self._train_position = None
        self._train_loader = loader
        return loader

    def task_settings(self) -> dict[str, Any]:
        """Keyword arguments the stage's task is built with (a classifier's labels); none here."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, once there is a loader (Lightning saves it)."""
        if self._train_loader is None:
            return {}
        return {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved position for the next training loader built."""
        self._train_position = state_dict.get("train_loader")
