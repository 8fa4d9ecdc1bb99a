"""Training: LoRA adapters from a dataset, by a named backend, registered as candidates."""
