"""ae_train: autoencoders on sharded WebDataset data across DDP ranks, with per-rank logs."""
__version__ = "0.1.0"
