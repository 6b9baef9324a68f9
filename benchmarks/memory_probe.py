"""Peak memory of explaining all words of a 16-word caption, in this process (Linux).

    python benchmarks/memory_probe.py batched|loop

Prints {"mode", "peak_above_setup_mib"}: the peak resident set size (VmHWM) reached while
explaining, minus the resident size after loading the model; the peak is reset after setup by
writing 5 to /proc/self/clear_refs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    from mmcam import GradCAM
    from mmcam.targets import WordTarget
    from run import CAPTION_16, _captioner

    mode = sys.argv[1]
    torch.set_num_threads(1)
    scorer, image = _captioner()
    tokens = scorer.tokenize(CAPTION_16)
    ids = torch.tensor([tokens.ids])
    targets = [WordTarget((t,), (tokens.ids[t],)) for t in range(len(tokens.ids))]
    with GradCAM(scorer.model, "encoder", forward=scorer.score) as cam:
        cam((image, ids), targets[:1])  # warm-up: allocator and lazy initialisation
        Path("/proc/self/clear_refs").write_text("5")
        setup = _status_kib("VmRSS")
        if mode == "batched":
            cam((image, ids), targets)
        else:
            for target in targets:
                cam((image, ids), [target])
    peak = _status_kib("VmHWM")
    print(json.dumps({"mode": mode, "peak_above_setup_mib": (peak - setup) / 1024}))


if __name__ == "__main__":
    main()
