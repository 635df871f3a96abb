"""llmprep: train a GPT from raw text to a fine-tuned model."""

__version__ = "0.1.0"
