"""Evaluation beyond the loss: scoring generated responses with an LLM judge."""
