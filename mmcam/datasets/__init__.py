"""Explain a whole dataset: items files in, Parquet parts out, on one of three engines.

``items.jsonl`` -> engine (local DataLoader | torchrun rank shard | Ray Data actor pool) -> the
same per-batch function (:func:`~mmcam.datasets.rows.explain_rows`: many images, padded texts,
one forward and one batched backward) -> Parquet parts committed atomically + ``manifest.json``.
"""

from .api import explain_dataset
from .task import DatasetTask

__all__ = ["DatasetTask", "explain_dataset"]
