"""The GPT model and its configuration."""

from llmprep.model.config import GPTConfig
from llmprep.model.gpt import GPT

__all__ = ["GPT", "GPTConfig"]
