"""Dataset throughput on the CPU (issue 13): items/s of the shipped captioner and VQA model.

    python benchmarks/dataset.py --json               # every section, 64 items
    python benchmarks/dataset.py --only batch --items 32

Sections:
- ``batch``: the per-batch function (one forward and one batched backward per minibatch, rows
  with native-grid maps) at batch 1 and 16 on decoded images, ``--threads`` torch threads;
  captions given (a dataset's own captions) and generated, VQA with the top answer.
- ``ray``: ``explain_dataset(engine="ray")`` with 1 and 2 actors of one thread each, on a local
  cluster of 2 CPUs started before the clock runs (actor start-up and model loading inside).
- ``torchrun``: the CLI alone and under ``torchrun --nproc-per-node 2`` (gloo), whole command
  wall time (process start, model loading and the manifest included).
Items/s is items over median wall seconds of ``--repeats`` runs (after a warm-up run). Ray and
torchrun run N and 2N items (``--engine-items``; VQA 8N and 16N): ``items_per_s_after_start`` = N / (t(2N) - t(N)), the rate once
processes have started and loaded the model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import mmcam  # noqa: E402
from mmcam.data.scenes import make_split  # noqa: E402
from mmcam.datasets.items import by_length, decode, read_items  # noqa: E402
from mmcam.datasets.rows import explain_rows  # noqa: E402
from mmcam.datasets.task import DatasetTask  # noqa: E402

QUESTIONS = ("what color is the shape?", "what shape is in the image?", "is there a circle?")


def write_items(folder: Path, count: int, images: int = 64) -> dict[str, Path]:
    """``images`` scenes as PNGs and three items files of ``count`` lines cycling over them:
    captions given, captions generated, questions."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"caption": folder / "captions.jsonl", "generated": folder / "generated.jsonl", "vqa": folder / "questions.jsonl"}
    lines: dict[str, list[str]] = {name: [] for name in files}
    scenes = make_split("test", min(count, images))
    for n, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(folder / f"scene{n:04d}.png")
    for n in range(count):
        path, scene = folder / f"scene{n % len(scenes):04d}.png", scenes[n % len(scenes)]
        lines["caption"].append(json.dumps({"image": str(path), "caption": scene.caption}))
        lines["generated"].append(json.dumps({"image": str(path)}))
        lines["vqa"].append(json.dumps({"image": str(path), "question": QUESTIONS[n % len(QUESTIONS)]}))
    for name, path in files.items():
        path.write_text("\n".join(lines[name]) + "\n")
    return files


CLOCK = time.perf_counter  # the batch section's clock; --clock cpu: the process's CPU seconds


def median(function, repeats: int, clock=time.perf_counter) -> float:
    """Median seconds of ``repeats`` runs after a warm-up; engine runs keep the wall clock (their
    work is in other processes)."""
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times)


def batch_section(files: dict[str, Path], args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    results = {}
    for name, kind, order in (
        ("caption", "caption", by_length), ("caption", "caption", list), ("generated", "caption", by_length), ("vqa", "vqa", by_length)
    ):
        if args.kind and kind not in args.kind:
            continue
        task = DatasetTask(kind)
        adapter = task.load_adapter()
        decoded = [decode(item) for item in order(read_items(files[name], task))]  # by_length: as the engines order them
        entry = {}
        for size in (1, 16):
            def run(size=size):
                for start in range(0, len(decoded), size):
                    explain_rows(adapter, task, decoded[start : start + size])
            seconds = median(run, args.repeats, CLOCK)
            entry[f"batch_{size}_items_per_s"] = round(len(decoded) / seconds, 2)
        entry["speedup_16_over_1"] = round(entry["batch_16_items_per_s"] / entry["batch_1_items_per_s"], 2)
        results[name if order is by_length else f"{name}_file_order"] = entry
    return results


def marginal(run, files: dict[str, Path], name: str, counts: tuple[int, int], repeats: int) -> dict:
    """Items/s of whole runs over N and 2N items, and N / (t(2N) - t(N)): the rate once
    processes have started and loaded the model (None when start-up noise hides it)."""
    small, large = counts
    seconds = {count: median(lambda count=count: run(files[f"{name}_{count}"]), repeats) for count in counts}
    extra = seconds[large] - seconds[small]
    return {
        f"items_per_s_{large}": round(large / seconds[large], 2),
        "items_per_s_after_start": round((large - small) / extra, 2) if extra > 0 else None,
        f"seconds_{small}": round(seconds[small], 2),
        f"seconds_{large}": round(seconds[large], 2),
    }


def _engine_counts(name: str, args: argparse.Namespace) -> tuple[int, int]:
    """N and 2N for an engine run: VQA is ~10x faster per item, so it gets 8x the items."""
    count = args.engine_items * (8 if name == "vqa" else 1)
    return count, 2 * count


def ray_section(files: dict[str, Path], args: argparse.Namespace) -> dict:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        for name, kind in (("caption", "caption"), ("vqa", "vqa")):
            entry = {}
            for workers in (1, 2):
                def run(items, workers=workers, kind=kind):
                    with tempfile.TemporaryDirectory() as out:
                        mmcam.explain_dataset(items, Path(out) / "run", task=kind, engine="ray", workers=workers, batch_size=16, threads_per_worker=1, progress=False)
                entry[f"workers_{workers}"] = marginal(run, files, name, _engine_counts(name, args), args.repeats)
            entry["speedup_2_over_1_after_start"] = _ratio(entry["workers_2"], entry["workers_1"])
            results[name] = entry
    finally:
        ray.shutdown()
    return results


def torchrun_section(files: dict[str, Path], args: argparse.Namespace) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    results = {}
    for name, kind in (("caption", "caption"), ("vqa", "vqa")):
        entry = {}
        for processes in (1, 2):
            launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-port", "29612", "-m", "mmcam"] if processes > 1 else ["-m", "mmcam"]

            def run(items, launcher=launcher, kind=kind):
                with tempfile.TemporaryDirectory() as out:
                    command = [sys.executable, *launcher, kind, "--batch", str(items), "--out", f"{out}/run", "--format", "parquet", "--batch-size", "16", "--workers", "0", "--quiet"]
                    subprocess.run(command, check=True, env=environment, capture_output=True)
            entry[f"processes_{processes}"] = marginal(run, files, name, _engine_counts(name, args), args.repeats)
        entry["speedup_2_over_1_after_start"] = _ratio(entry["processes_2"], entry["processes_1"])
        results[name] = entry
    return results


def _ratio(two: dict, one: dict) -> float | None:
    rates = two["items_per_s_after_start"], one["items_per_s_after_start"]
    return None if None in rates else round(rates[0] / rates[1], 2)


SECTIONS = {"batch": batch_section, "ray": ray_section, "torchrun": torchrun_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--engine-items", type=int, default=256, help="N of the Ray and torchrun runs (VQA: 8N)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the batch section")
    parser.add_argument("--only", choices=list(SECTIONS), action="append")
    parser.add_argument("--kind", choices=("caption", "vqa"), action="append", help="batch section: only these tasks")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="batch section: wall seconds (default) or the process's CPU seconds (fairer on a busy machine)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as folder:
        files = write_items(Path(folder) / "batch", args.items)
        for name in ("caption", "vqa"):
            for count in _engine_counts(name, args):
                files[f"{name}_{count}"] = write_items(Path(folder) / f"{name}{count}", count)[name]
        report = {"clock": args.clock, "items": args.items, "engine_items": args.engine_items, "repeats": args.repeats, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
        for name in args.only or SECTIONS:
            report[name] = SECTIONS[name](files, args)
            print(f"{name}: {json.dumps(report[name])}", file=sys.stderr)
    print(json.dumps(report, indent=1) if args.json else report)


if __name__ == "__main__":
    main()
