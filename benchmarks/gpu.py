"""A prepared GPU check (issue 13); runs in under 5 minutes on one CUDA device.

    python benchmarks/gpu.py --json            # cuda (cuda:0); --device cuda:N for another

It reports, for the shipped captioner (captions given) and the shipped VQA model:
- items/s of the per-batch function (one forward and one batched backward per minibatch, rows
  with native-grid maps) at batch 1, 8 and 32 on the GPU, after a warm-up, synchronised;
- the largest difference between the CPU's and the GPU's native-grid maps for the same items,
  relative to the CPU map's maximum (goal: <= 1e-4), and between their scores;
- peak GPU memory (torch.cuda.max_memory_allocated) per batch size;
- the ``vlm`` section of ``benchmarks/run.py`` on the GPU: all words of a 10-word caption of
  shapes-llava from one pass vs the peers' per-token loop (goal >= 5x; CPU-bound here).
It exits with status 1 when a map disagrees beyond 1e-4. Never a CI dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dataset import write_items  # noqa: E402
from mmcam.datasets.items import decode, read_items  # noqa: E402
from mmcam.datasets.rows import explain_rows  # noqa: E402
from mmcam.datasets.task import DatasetTask  # noqa: E402

AGREEMENT = 1e-4
SIZES = (1, 8, 32)


def throughput(adapter, task: DatasetTask, decoded, size: int, device: torch.device) -> tuple[float, int]:
    """Items/s over all items at batch ``size`` and the peak GPU memory in bytes."""
    explain_rows(adapter, task, decoded[:size])  # warm-up: kernels, allocator
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for first in range(0, len(decoded), size):
        explain_rows(adapter, task, decoded[first : first + size])
    torch.cuda.synchronize(device)
    return len(decoded) / (time.perf_counter() - start), int(torch.cuda.max_memory_allocated(device))


def agreement(cpu_rows, gpu_rows) -> dict[str, float]:
    """Largest map difference relative to the CPU map's maximum, and largest score difference."""
    maps, scores = 0.0, 0.0
    for mine, theirs in zip(cpu_rows, gpu_rows, strict=True):
        assert (mine["item"], mine["target"]) == (theirs["item"], theirs["target"]), "CPU and GPU explained different targets"
        reference = np.asarray(mine["map"], dtype=np.float64)
        scale = max(float(np.abs(reference).max()), 1e-12)
        maps = max(maps, float(np.abs(reference - np.asarray(theirs["map"], dtype=np.float64)).max()) / scale)
        scores = max(scores, abs(mine["score"] - theirs["score"]))
    return {"max_map_difference_relative": maps, "max_score_difference": scores}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--items", type=int, default=256, help="items timed per batch size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "items": args.items}
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        files = write_items(Path(folder), args.items)
        for name, kind in (("caption", "caption"), ("vqa", "vqa")):
            cpu_task, gpu_task = DatasetTask(kind), DatasetTask(kind, device=str(device))
            decoded = [decode(item) for item in read_items(files[name], cpu_task)]
            gpu_adapter = gpu_task.load_adapter()
            entry: dict = {}
            for size in SIZES:
                items_per_s, peak = throughput(gpu_adapter, gpu_task, decoded, size, device)
                entry[f"batch_{size}"] = {"items_per_s": round(items_per_s, 1), "peak_gpu_mb": round(peak / 2**20, 1)}
            sample = decoded[:32]
            cpu_rows = explain_rows(cpu_task.load_adapter(), cpu_task, sample)
            gpu_rows = explain_rows(gpu_adapter, gpu_task, sample)
            entry["cpu_gpu"] = agreement(cpu_rows, gpu_rows)
            failed |= entry["cpu_gpu"]["max_map_difference_relative"] > AGREEMENT
            report[name] = entry
            print(f"{name}: {json.dumps(entry)}", file=sys.stderr)
    from run import vlm

    report["vlm"] = vlm(argparse.Namespace(device=str(device), repeats=7))
    print(f"vlm: {json.dumps(report['vlm'])}", file=sys.stderr)
    report["agreement_ok"] = not failed
    print(json.dumps(report, indent=1) if args.json else report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
