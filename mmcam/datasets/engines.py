"""Engines over the same per-batch function (:func:`~mmcam.datasets.rows.explain_rows`, then
one committed part per minibatch): one process with a DataLoader (``local``; under torchrun each
rank takes its shard from RANK/WORLD_SIZE), or a Ray Data actor pool (``ray``)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .items import DatasetItem, DecodingDataset, as_list, decode
from .output import ParquetOutput
from .rows import explain_rows
from .task import DatasetTask


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun's RANK/WORLD_SIZE; 0, 1 alone)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_local(
    task: DatasetTask,
    output: ParquetOutput,
    items: Sequence[DatasetItem],
    *,
    batch_size: int,
    workers: int,
    progress: bool,
    rank: int = 0,
) -> int:
    """Explain ``items`` in this process: images decoded by ``workers`` DataLoader processes
    (0: here), one pass and one committed part per minibatch; returns the items done."""
    adapter = task.load_adapter()
    loader = DataLoader(
        DecodingDataset(list(items)), batch_size=batch_size, num_workers=workers, collate_fn=as_list,
        persistent_workers=False,
    )
    bar = tqdm(total=len(items), unit="item", file=sys.stderr, disable=not progress, desc=f"rank {rank}" if rank else None)
    done = 0
    with bar:
        for batch in loader:
            output.commit(explain_rows(adapter, task, batch), rank=rank)
            done += len(batch)
            bar.update(len(batch))
    return done


class RayWorker:
    """A Ray Data actor: loads the model once, then explains and commits each batch it gets."""

    def __init__(self, task: DatasetTask, output: ParquetOutput, threads: int) -> None:
        torch.set_num_threads(threads)
        self.task, self.output = task, output
        self.adapter = task.load_adapter()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        items = [DatasetItem(**json.loads(line)) for line in batch["line"]]
        decoded = [decode(item) for item in items]
        self.output.commit(explain_rows(self.adapter, self.task, decoded), rank=os.getpid() % 1000)
        return {"item": np.array([item.item for item in items], dtype=np.int64)}


def run_ray(
    task: DatasetTask,
    output: ParquetOutput,
    items: Sequence[DatasetItem],
    *,
    batch_size: int,
    workers: int,
    gpus_per_worker: float,
    threads_per_worker: int,
    progress: bool,
) -> int:
    """Explain ``items`` with Ray Data: ``map_batches`` over a pool of ``workers`` actors (each
    with ``gpus_per_worker`` GPUs and ``threads_per_worker`` torch threads) that commit their
    own parts, so OUT must be on storage every node sees. Connects to RAY_ADDRESS when set,
    else to the running or a new local cluster."""
    try:
        import ray
    except ImportError:
        from ..errors import InputError

        raise InputError("--engine ray needs Ray Data: pip install 'mmcam[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts items; Ray's would log every few seconds
    # one JSON string per item (Ray's columns would turn None into NaN); image paths made
    # absolute, for actors that run in other folders
    records = [
        {"line": json.dumps({**dataclasses.asdict(item), "path": os.path.abspath(item.path or item.image)})}
        for item in items
    ]
    if not records:
        return 0
    dataset = ray.data.from_items(records, override_num_blocks=_ray_blocks(len(records), batch_size, workers)).map_batches(
        RayWorker,
        fn_constructor_kwargs={"task": task, "output": output, "threads": threads_per_worker},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads_per_worker,
        num_gpus=gpus_per_worker or None,
    )
    done = 0
    with tqdm(total=len(records), unit="item", file=sys.stderr, disable=not progress) as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            done += len(batch["item"])
            bar.update(len(batch["item"]))
    return done


BATCHES_PER_BLOCK = 8  # Ray schedules, in the driver, one task per block: few enough to stay cheap
BLOCKS_PER_WORKER = 16  # ... and enough per actor to balance the load of slow items


def _ray_blocks(items: int, batch_size: int, workers: int) -> int:
    """How many blocks Ray Data splits ``items`` records into: about BATCHES_PER_BLOCK
    minibatches a block (its default makes blocks of a few items, and the driver's per-block
    work then outweighs a fast model's), but at least BLOCKS_PER_WORKER per actor."""
    return max(1, min(items, max(-(-items // (batch_size * BATCHES_PER_BLOCK)), BLOCKS_PER_WORKER * workers)))
