"""Helpers of the MSMAE recipes: data and image files, checkpoints and logs, run hygiene, DDP."""
