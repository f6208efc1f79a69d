"""One run's lifecycle: the trainer and its steppers, records, metrics, checkpoints, the run folder, the runtime."""
