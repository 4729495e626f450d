"""The data path, in the order data flows through its modules:

which shards (urls) -> how many samples (shards, splits) -> who reads what (plan; order, resume) ->
a shard's bytes (source, remote) -> tar members (tario; stream, tarscan) -> samples (npyrows, decode,
preprocess, screen) -> batches (reader) -> hand-over to the rank (handover; ring) -> Lightning
(datamodule). Writing shards: make, tarwriter. docs/ARCHITECTURE.md has a line on each.
"""
