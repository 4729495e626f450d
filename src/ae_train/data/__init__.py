"""Shards, counts, the epoch plan, the tar reader and the DataModule."""
