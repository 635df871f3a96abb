"""Stage ``classify``: a GPT fine-tuned as a text classifier (the book's chapter 6)."""

from llmprep.stages.classify.data import ClassificationDataModule
from llmprep.stages.classify.evaluate import evaluate, report
from llmprep.stages.classify.task import ClassifyTask as Task

DATA_MODULES = (ClassificationDataModule,)

__all__ = ["DATA_MODULES", "Task", "evaluate", "report"]
