"""Stage ``dpo``: Direct Preference Optimization (the book's chapter 7 bonus material)."""

from llmprep.stages.dpo.data import PreferenceDataModule
from llmprep.stages.dpo.evaluate import evaluate, report
from llmprep.stages.dpo.task import DPOTask as Task

DATA_MODULES = (PreferenceDataModule,)

BUILDS_ON = ("instruct",)
"""The stages whose pieces this one imports: DPO tunes an instruction-tuned model, as in the
book, so it prompts, encodes, answers and judges with the instruct stage's code."""

__all__ = ["BUILDS_ON", "DATA_MODULES", "Task", "evaluate", "report"]
