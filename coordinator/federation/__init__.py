"""The round loop on Flower: strategy, messages, stand-in kinds, checkpoints, lineage, report, SecAgg+."""
