"""Speed of mmcam against its peers, measured in the same run.

    python benchmarks/run.py --json            # every section
    python benchmarks/run.py --only classify   # one section

Each section prints median wall-clock seconds over ``--repeats`` runs (after one warm-up) and
ratios against the peers. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def section(name: str):
    def register(function):
        SECTIONS[name] = function
        return function

    return register


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@section("classify")
def classify(args: argparse.Namespace) -> dict:
    """EfficientNet-Lite0, batch 8 at 224 px, Grad-CAM of each image's top class on bn2,
    upsampled to 224 and normalised, by every library."""
    import warnings

    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from mmcam import GradCAM
    from mmcam.core.maps import normalize
    from mmcam.targets import TopClassTarget
    from models.efficientnet_lite0 import load_efficientnet_lite0

    warnings.filterwarnings("ignore")
    model = load_efficientnet_lite0()
    torch.manual_seed(0)
    images = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        top = model(images).argmax(dim=1).tolist()

    def ours():
        with GradCAM(model, "bn2") as cam:
            return cam(images, [TopClassTarget()])

    def peer_grad_cam():
        with PeerGradCAM(model=model, target_layers=[model.bn2]) as cam:
            return cam(images, targets=[ClassifierOutputTarget(index) for index in top])

    captum = LayerGradCam(model, model.bn2)

    def peer_captum():
        raw = captum.attribute(images, target=top, relu_attributions=True)
        return normalize(LayerAttribution.interpolate(raw, (224, 224), interpolate_mode="bilinear"))

    seconds = {
        "mmcam": median_seconds(ours, args.repeats),
        "pytorch_grad_cam": median_seconds(peer_grad_cam, args.repeats),
        "captum": median_seconds(peer_captum, args.repeats),
    }
    return {
        "model": "efficientnet_lite0",
        "batch": 8,
        "size": 224,
        "layer": "bn2",
        "seconds": seconds,
        "speedup_vs_pytorch_grad_cam": seconds["pytorch_grad_cam"] / seconds["mmcam"],
        "speedup_vs_captum": seconds["captum"] / seconds["mmcam"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch_threads": torch.get_num_threads()}
    for name in args.only or SECTIONS:
        results[name] = SECTIONS[name](args)
        if not args.json:
            print(name, json.dumps(results[name], indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
