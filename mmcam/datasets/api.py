"""``mmcam.explain_dataset``: the Python entry point behind ``mmcam caption|vqa --batch FILE
--format parquet``."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .engines import rank_and_world, run_local, run_ray
from .items import by_length, read_items
from .output import ParquetOutput
from .task import DatasetTask

ENGINES = ("local", "ray")


def explain_dataset(
    items: str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str = "caption",
    model: str | None = None,
    weights: str | None = None,
    layer: str | None = None,
    method: str | None = None,
    words: list[str] | None = None,
    score: str = "logprob",
    beam: int = 1,
    answers: list[str] | None = None,
    top: int = 1,
    batch_size: int = 16,
    engine: str = "local",
    workers: int | None = None,
    gpus_per_worker: float = 0,
    threads_per_worker: int = 1,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Explain every line of ``items`` (JSON lines: ``{"image": P}`` plus ``"caption"`` for
    captions, ``"question"`` and an optional ``"answer"`` for VQA) into ``out``: Parquet parts,
    one row per item and target with the native-grid map, and ``out/manifest.json``, whose
    path is returned (under torchrun: rank 0's, after every rank's parts exist).

    ``engine="local"`` runs here, ``workers`` DataLoader processes decoding images (default
    2), ``batch_size`` images per forward/backward pass, on ``device``; launched by torchrun,
    each rank takes every WORLD_SIZE-th pending item (``device="cuda"``: its LOCAL_RANK's
    GPU). ``engine="ray"`` runs ``workers`` actors (default 2) on Ray Data, on their GPU when
    ``gpus_per_worker`` > 0. ``resume=True`` skips the items of committed parts; without it, a
    folder holding a run is refused. A bad line or image is an error row.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per torchrun rank
    if engine == "ray" and gpus_per_worker and device == "cpu":
        device = "cuda"  # an actor given a GPU runs on it (Ray sets CUDA_VISIBLE_DEVICES per actor)
    spec = DatasetTask(
        task, model, weights, layer, method, tuple(words) if words else None, score, beam,
        tuple(answers) if answers else None, top, device,
    )
    lines = read_items(items, spec)
    output = ParquetOutput(out, spec.settings(), resume=resume)
    rank, world = rank_and_world()
    group = _process_group(world)
    output.check()
    _barrier(group)  # every rank has checked before rank 0 records this run
    if rank == 0:
        output.prepare(str(items))
    _barrier(group)
    done = output.committed()
    _barrier(group)  # every rank shards the same pending items before any commits a part
    pending = by_length([line for line in lines if line.item not in done][rank::world])
    if engine == "ray":
        run_ray(
            spec, output, pending, batch_size=batch_size, workers=workers or 2, gpus_per_worker=gpus_per_worker,
            threads_per_worker=threads_per_worker, progress=progress,
        )
    else:
        run_local(spec, output, pending, batch_size=batch_size, workers=2 if workers is None else workers, progress=progress, rank=rank)
    _barrier(group)  # rank 0 writes the manifest once every rank's parts exist
    manifest = output.folder / "manifest.json"
    if rank == 0:
        manifest = output.finish({"kind": task, "engine": engine, "processes": world})
    _barrier(group)
    if group:
        import torch.distributed as dist

        dist.destroy_process_group()
    return manifest


def _process_group(world: int):
    """A gloo process group for the barriers of a torchrun launch (None when alone)."""
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.group.WORLD


def _barrier(group) -> None:
    if group is not None:
        import torch.distributed as dist

        dist.barrier()
