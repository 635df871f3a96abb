"""Stage ``pretrain``: next-token prediction on a text corpus (the book's chapter 5)."""

from llmprep.stages.pretrain.data import PretrainDataModule
from llmprep.stages.pretrain.evaluate import evaluate, report
from llmprep.stages.pretrain.task import PretrainTask as Task

DATA_MODULES = (PretrainDataModule,)

__all__ = ["DATA_MODULES", "Task", "evaluate", "report"]
