"""Peak memory of ``mmcam caption PHOTO --caption (12 words) --out DIR`` by photo size (Linux).

    python benchmarks/memory_photo.py [--json] [--sizes 128x128 1500x1000 6000x4000]

Each size runs the real command in a fresh process (so every measurement starts clean) on a
generated scene scaled up to that size, with the shipped captioner and a 12-word caption, and
reads the child's peak resident set size (``ru_maxrss``). Prints, per size, the peak and the
peak above the 128x128 run (the issue's goals: 1500x1000 <= +150 MB, 6000x4000 <= +1 GB), and
the wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAPTION_12 = "a red circle and a blue rectangle and a green triangle and"
_CHILD = (
    "import resource, subprocess, sys\n"
    "result = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(result.returncode, peak)\n"
    "sys.stderr.write(result.stderr[-2000:])\n"
)


def photo(path: Path, size: tuple[int, int]) -> Path:
    """A generated test scene scaled (bilinear) to ``size`` = (width, height)."""
    from PIL import Image

    from mmcam.data.scenes import make_split

    scene = make_split("test", 1)[0]
    Image.fromarray(scene.image).resize(size, Image.BILINEAR).save(path)
    return path


def measure(size: tuple[int, int], work: Path) -> dict[str, float]:
    image = photo(work / f"photo_{size[0]}x{size[1]}.png", size)
    out = work / f"out_{size[0]}x{size[1]}"
    command = [sys.executable, "-m", "mmcam", "caption", str(image), "--caption", CAPTION_12, "--out", str(out), "--json"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _CHILD, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    code, peak_kib = (int(value) for value in result.stdout.split())
    if code != 0:
        raise RuntimeError(f"mmcam caption failed on {size}: {result.stderr.strip().splitlines()[-1:]}")
    return {"peak_mib": peak_kib / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x128", "1500x1000", "6000x4000"], help="WIDTHxHEIGHT")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [tuple(int(part) for part in text.split("x")) for text in args.sizes]
    with tempfile.TemporaryDirectory() as folder:
        results = {f"{w}x{h}": measure((w, h), Path(folder)) for w, h in sizes}
    base = results[args.sizes[0]]["peak_mib"]
    for result in results.values():
        result["above_first_mib"] = result["peak_mib"] - base
    if args.json:
        print(json.dumps({"caption_words": len(CAPTION_12.split()), "sizes": results}))
        return
    for name, result in results.items():
        print(f"{name:>10}: peak {result['peak_mib']:7.0f} MiB, +{result['above_first_mib']:6.0f} MiB over {args.sizes[0]}, {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
