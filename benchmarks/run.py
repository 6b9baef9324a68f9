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


# what median_seconds reads: wall-clock seconds, or with --clock cpu the process's CPU seconds
# (on a machine shared with other jobs, time spent waiting for a core is then not counted)
CLOCK: Callable[[], float] = time.perf_counter


def median_seconds(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function on ``CLOCK`` (wall clock, or the process's CPU time with
    ``--clock cpu``). They run round-robin (after one warm-up each), so a slow spell of the
    machine hits every contender alike."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = CLOCK()
            function()
            times[name].append(CLOCK() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _efficientnet_batch():
    """EfficientNet-Lite0, a seeded batch of 8 images at 224 px and each one's top class."""
    import warnings

    from mmcam.models.efficientnet_lite0 import load_efficientnet_lite0

    warnings.filterwarnings("ignore")
    model = load_efficientnet_lite0()
    torch.manual_seed(0)
    images = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        top = model(images).argmax(dim=1).tolist()
    return model, images, top


@section("classify")
def classify(args: argparse.Namespace) -> dict:
    """EfficientNet-Lite0, batch 8 at 224 px, Grad-CAM of each image's top class on bn2,
    upsampled to 224 and normalised, by every library."""
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from mmcam import GradCAM
    from mmcam.core.maps import normalize
    from mmcam.targets import TopClassTarget

    model, images, top = _efficientnet_batch()

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

    seconds = median_seconds({"mmcam": ours, "pytorch_grad_cam": peer_grad_cam, "captum": peer_captum}, args.repeats)
    return {
        "model": "efficientnet_lite0",
        "batch": 8,
        "size": 224,
        "layer": "bn2",
        "seconds": seconds,
        "speedup_vs_pytorch_grad_cam": seconds["pytorch_grad_cam"] / seconds["mmcam"],
        "speedup_vs_captum": seconds["captum"] / seconds["mmcam"],
    }


CAPTION_7 = "a red circle and a blue triangle"
CAPTION_16 = "a red circle and a blue triangle and a green rectangle and a black circle and a"


def _captioner():
    """The shipped captioner's scorer and a generated test scene, preprocessed."""
    from mmcam.adapters.shapes_captioner import ShapesCaptionerScorer
    from mmcam.data.scenes import make_split
    from mmcam.models.captioner import load_shapes_captioner

    scorer = ShapesCaptionerScorer(load_shapes_captioner())
    image = scorer.preprocess(make_split("test", 1)[0].image)[None]
    return scorer, image


class _TeacherForced(torch.nn.Module):
    """The captioner with a fixed caption, as a module pytorch-grad-cam can call on images:
    output (N, L, V) log-probs."""

    def __init__(self, scorer, ids: torch.Tensor) -> None:
        super().__init__()
        self.model, self.scorer, self.ids = scorer.model, scorer, ids

    def forward(self, images):
        return self.scorer.score(images, self.ids.expand(images.shape[0], -1)).logprobs


@section("caption")
def caption(args: argparse.Namespace) -> dict:
    """All 7 words of a caption from one pass vs one word vs a per-word loop of
    pytorch-grad-cam on the same model and layer (the captioner's encoder)."""
    from pytorch_grad_cam import GradCAM as PeerGradCAM

    from mmcam import GradCAM
    from mmcam.targets import WordTarget

    scorer, image = _captioner()
    tokens = scorer.tokenize(CAPTION_7)
    ids = torch.tensor([tokens.ids])
    targets = [WordTarget((t,), (tokens.ids[t],)) for t in range(len(tokens.ids))]

    def ours(chosen):
        with GradCAM(scorer.model, "encoder", forward=scorer.score) as cam:
            return cam((image, ids), chosen)

    wrapped = _TeacherForced(scorer, ids)

    def peer_loop():
        with PeerGradCAM(model=wrapped, target_layers=[scorer.model.encoder]) as cam:
            return [
                cam(image, targets=[lambda out, t=t: out[t, tokens.ids[t]]]) for t in range(len(tokens.ids))
            ]

    seconds = median_seconds(
        {
            "mmcam_all_words": lambda: ours(targets),
            "mmcam_one_word": lambda: ours(targets[:1]),
            "pytorch_grad_cam_per_word_loop": peer_loop,
        },
        args.repeats,
    )
    return {
        "model": "shapes-captioner",
        "layer": "encoder",
        "words": len(targets),
        "seconds": seconds,
        "speedup_vs_loop": seconds["pytorch_grad_cam_per_word_loop"] / seconds["mmcam_all_words"],
        "all_over_one": seconds["mmcam_all_words"] / seconds["mmcam_one_word"],
    }


def _scene_and_question():
    """A generated test scene (image array) and an easy-VQA test image path with a question."""
    import easy_vqa

    from mmcam.data.scenes import make_split

    questions, _, image_ids = easy_vqa.get_test_questions()
    return make_split("test", 1)[0].image, easy_vqa.get_test_image_paths()[image_ids[0]], questions[0]


@section("caption_api")
def caption_api(args: argparse.Namespace) -> dict:
    """What users run: ``explain()`` through the public API with each model's default method
    (Guided variants included), for all words / answers vs one vs a per-word (per-answer)
    loop. Captioner: the 7-word caption; VQA: the top 3 answers of one question. ``explain()``
    makes Guided Backprop on first use, so the captioner is also timed with its full-size maps
    looked at (``_maps``: the guided_ maps, which need it) and with Guided Backprop computed in
    the same pass (``guided=True``)."""
    import mmcam

    scene, vqa_image, question = _scene_and_question()
    captioner, vqa = mmcam.load("shapes-captioner"), mmcam.load("easy-vqa")
    words = len(CAPTION_7.split())
    answers = [entry["answer"] for entry in vqa.explain(vqa_image, question, top=3).info["top"][:3]]
    seconds = median_seconds(
        {
            "caption_all_words": lambda: captioner.explain(scene, CAPTION_7),
            "caption_one_word": lambda: captioner.explain(scene, CAPTION_7, words=[0]),
            "caption_per_word_loop": lambda: [captioner.explain(scene, CAPTION_7, words=[w]) for w in range(words)],
            # what a guided_ method's maps cost once looked at (Guided Backprop made on first use)
            "caption_all_words_maps": lambda: captioner.explain(scene, CAPTION_7).heatmaps,
            "caption_one_word_maps": lambda: captioner.explain(scene, CAPTION_7, words=[0]).heatmaps,
            "caption_per_word_loop_maps": lambda: [
                captioner.explain(scene, CAPTION_7, words=[w]).heatmaps for w in range(words)
            ],
            "caption_all_words_eager": lambda: captioner.explain(scene, CAPTION_7, guided=True),
            "vqa_top3": lambda: vqa.explain(vqa_image, question, top=3),
            "vqa_top1": lambda: vqa.explain(vqa_image, question),
            "vqa_per_answer_loop": lambda: [vqa.explain(vqa_image, question, [answer]) for answer in answers],
        },
        args.repeats,
    )
    return {
        "caption_model": "shapes-captioner",
        "caption_method": captioner.default_method,
        "words": words,
        "vqa_model": "easy-vqa",
        "vqa_method": vqa.default_method,
        "answers": 3,
        "seconds": seconds,
        "caption_all_over_one": seconds["caption_all_words"] / seconds["caption_one_word"],
        "caption_loop_over_all": seconds["caption_per_word_loop"] / seconds["caption_all_words"],
        "caption_maps_all_over_one": seconds["caption_all_words_maps"] / seconds["caption_one_word_maps"],
        "caption_maps_loop_over_all": seconds["caption_per_word_loop_maps"] / seconds["caption_all_words_maps"],
        "caption_maps_lazy_over_eager": seconds["caption_all_words_maps"] / seconds["caption_all_words_eager"],
        "vqa_top3_over_top1": seconds["vqa_top3"] / seconds["vqa_top1"],
        "vqa_loop_over_top3": seconds["vqa_per_answer_loop"] / seconds["vqa_top3"],
    }


@section("guided")
def guided(args: argparse.Namespace) -> dict:
    """Guided Grad-CAM for a batch of 8 (EfficientNet-Lite0, 224 px, top class): mmcam's
    batched pass vs pytorch-grad-cam, whose Guided Backprop takes one image at a time."""
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam import GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from mmcam import guided_gradcam
    from mmcam.targets import TopClassTarget

    model, images, top = _efficientnet_batch()

    def ours():
        return guided_gradcam(model, images, [TopClassTarget()], layer="bn2")

    def peer():
        backprop = GuidedBackpropReLUModel(model=model, device="cpu")
        results = []
        with PeerGradCAM(model=model, target_layers=[model.bn2]) as cam:
            maps = cam(images, targets=[ClassifierOutputTarget(index) for index in top])
        for n in range(len(images)):
            gradients = backprop(images[n : n + 1], target_category=top[n])  # (H, W, C)
            results.append(gradients * maps[n][..., None])
        return results

    seconds = median_seconds({"mmcam": ours, "pytorch_grad_cam": peer}, args.repeats)
    return {
        "model": "efficientnet_lite0",
        "batch": 8,
        "seconds": seconds,
        "speedup_vs_pytorch_grad_cam": seconds["pytorch_grad_cam"] / seconds["mmcam"],
    }


CAPTION_10 = "a red circle and a blue triangle and a green"


@section("vlm")
def vlm(args: argparse.Namespace) -> dict:
    """shapes-llava, all words of a 10-word caption at the default layer: ``explain()`` with
    Grad-CAM (one forward, one batched backward) vs the peers' per-token loop, written out plainly here: per
    token, one forward with a hook on the same layer and one ``torch.autograd.grad`` of the
    token's log-prob to the hooked output, then its Grad-CAM map. ``explain`` runs as users call
    it (with its runner-up contrast maps: twice the targets) and with ``contrast=False`` (the
    loop's maps exactly, checked: ``max_map_difference``)."""
    import mmcam
    from mmcam.data.scenes import make_split

    device = torch.device(getattr(args, "device", "cpu"))
    adapter = mmcam.load("shapes-llava")
    scorer, model = adapter.scorer, adapter.scorer.model.to(device)
    scene = make_split("test", 1)[0].image
    tokens = scorer.tokenize(CAPTION_10)
    pixels = scorer.preprocess(scene)[None].to(device)
    text = torch.tensor([list(scorer.prefix) + list(tokens.ids)], device=device)
    first = len(scorer.prefix) - 1

    def synchronized(function):  # CUDA runs asynchronously: a timing ends when the device is done
        if device.type != "cuda":
            return function
        return lambda: (function(), torch.cuda.synchronize(device))

    def per_token_loop():
        maps = []
        for t, token in enumerate(tokens.ids):
            captured = []
            handle = model.get_submodule(adapter.layer_name).register_forward_hook(lambda m, i, o: captured.append(o))
            try:
                logits = model(pixel_values=pixels, input_ids=text).logits
            finally:
                handle.remove()
            score = torch.log_softmax(logits[0, first + t], dim=-1)[token]
            (gradient,) = torch.autograd.grad(score, captured[0])
            # the layer's tokens on the patch grid (1, C, h, w) (a tower block's CLS dropped)
            patches, patch_gradients = scorer.reshape(captured[0].detach())[0], scorer.reshape(gradient)[0]
            weights = patch_gradients.mean(dim=(1, 2))  # Grad-CAM: gradients averaged over the grid
            maps.append(torch.relu(torch.einsum("c,chw->hw", weights, patches)))
        return torch.stack(maps)

    contenders = {
        "mmcam_all_words": lambda: adapter.explain(scene, CAPTION_10, method="gradcam", contrast=False),
        "mmcam_all_words_with_contrast": lambda: adapter.explain(scene, CAPTION_10, method="gradcam"),
        "mmcam_one_word": lambda: adapter.explain(scene, CAPTION_10, method="gradcam", words=[0], contrast=False),
        "per_token_loop": per_token_loop,
    }
    seconds = median_seconds({name: synchronized(function) for name, function in contenders.items()}, args.repeats)
    explanation = adapter.explain(scene, CAPTION_10, method="gradcam", contrast=False)
    difference = float((per_token_loop().cpu() - torch.from_numpy(explanation.grid_maps)).abs().max())
    return {
        "model": "shapes-llava",
        "device": str(device),
        "layer": adapter.layer_name,
        "method": "gradcam",
        "words": len(tokens.words),
        "tokens": len(tokens.ids),
        "seconds": seconds,
        "loop_over_all": seconds["per_token_loop"] / seconds["mmcam_all_words"],
        "loop_over_all_with_contrast": seconds["per_token_loop"] / seconds["mmcam_all_words_with_contrast"],
        "all_over_one": seconds["mmcam_all_words"] / seconds["mmcam_one_word"],
        "max_map_difference": difference,
    }


@section("memory")
def memory(args: argparse.Namespace) -> dict:
    """Peak resident memory above the loaded model for all words of a 16-word caption: one
    batched pass vs a per-word loop (each mode in a fresh process; peak reset after setup)."""
    import subprocess

    probe = Path(__file__).with_name("memory_probe.py")
    peaks = {}
    for mode in ("batched", "loop"):
        result = subprocess.run([sys.executable, str(probe), mode], capture_output=True, text=True, check=True)
        peaks[mode] = json.loads(result.stdout)["peak_above_setup_mib"]
    return {
        "model": "shapes-captioner",
        "words": 16,
        "peak_rss_above_setup_mib": peaks,
        "batched_over_loop": peaks["batched"] / peaks["loop"] if peaks["loop"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="device of the vlm section (cpu, cuda, cuda:N)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared machine)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall-clock seconds (default) or the process's CPU seconds (fairer on a busy shared machine, with --threads 1)",
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch_threads": torch.get_num_threads(), "clock": args.clock}
    for name in args.only or SECTIONS:
        results[name] = SECTIONS[name](args)
        if not args.json:
            print(name, json.dumps(results[name], indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
