"""Launching runs: the command line read and checked before Hydra starts anything, and each job run."""
