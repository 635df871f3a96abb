"""Data: named sources, the tokenizer-side token store, sampling and the stage data modules."""
