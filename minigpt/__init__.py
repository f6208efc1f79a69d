"""minigpt: train small GPT transformers from scratch to study learning-rate schedules."""

__version__ = "0.1.0"
