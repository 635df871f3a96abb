"""Training tasks: the LightningModules of the stages (pretrain, classify, instruct)."""
