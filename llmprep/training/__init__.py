"""The training shell: Hydra config to a Lightning Trainer, loggers, callbacks and run folders."""
