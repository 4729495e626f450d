"""What a training batch is: a tensor of samples, or with the sample ledger on, that tensor and the
WebDataset keys of its samples. Lightning moves a KeyedBatch to the device like any named tuple."""
from __future__ import annotations

from typing import Any, NamedTuple


class KeyedBatch(NamedTuple):
    x: Any  # torch.Tensor (B, *shape): the samples
    keys: list  # list[str] of B `__key__`s, in the batch's row order (padding repeats included)


def samples_of(batch):
    """The tensor of a batch, whichever form it came in."""
    return batch.x if isinstance(batch, KeyedBatch) else batch
