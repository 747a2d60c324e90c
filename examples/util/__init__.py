"""Helpers of the MSMAE recipes: lr schedule, optimiser groups, DDP, checkpoints, data, logs."""
