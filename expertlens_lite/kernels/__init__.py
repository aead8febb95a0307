"""Expertise kernels: exact average precision for many concepts, and expert bitsets.

- :func:`average_precision` — per-neuron AP against 0/1 labels (the library
  entry point, identical to ``sklearn.metrics.average_precision_score``).
- :func:`average_precision_many` — AP of every neuron for many concepts sharing
  one negative pool, streamed over column blocks (works on memory maps).
- :func:`threshold_bitsets`, :func:`topk_bitsets`, :func:`pack_masks`,
  :func:`unpack_masks`, :func:`popcount`, :func:`jaccard_matrix` — expert sets
  as uint64 bitsets and their all-pairs Jaccard similarity.
"""

from expertlens_lite.kernels.average_precision import average_precision, average_precision_many
from expertlens_lite.kernels.bitsets import (
    jaccard_matrix,
    pack_masks,
    popcount,
    threshold_bitsets,
    topk_bitsets,
    unpack_masks,
)

__all__ = [
    "average_precision",
    "average_precision_many",
    "jaccard_matrix",
    "pack_masks",
    "popcount",
    "threshold_bitsets",
    "topk_bitsets",
    "unpack_masks",
]
