"""Stage ``dpo``: Direct Preference Optimization (the book's chapter 7 bonus material)."""

from llmprep.stages.dpo.data import PreferenceDataModule
from llmprep.stages.dpo.evaluate import evaluate, report
from llmprep.stages.dpo.task import DPOTask as Task

DATA_MODULES = (PreferenceDataModule,)

__all__ = ["DATA_MODULES", "Task", "evaluate", "report"]
