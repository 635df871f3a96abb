"""Stage ``instruct``: supervised instruction fine-tuning (the book's chapter 7)."""

from llmprep.stages.instruct.data import InstructDataModule
from llmprep.stages.instruct.evaluate import evaluate, report
from llmprep.stages.instruct.task import InstructTask as Task

DATA_MODULES = (InstructDataModule,)

__all__ = ["DATA_MODULES", "Task", "evaluate", "report"]
