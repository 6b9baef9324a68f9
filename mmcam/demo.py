"""``mmcam demo``: explain bundled samples with the shipped models and write an HTML report."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .explanation import Explanation
from .registry import load
from .viewer import write_explanations
from .viz.report import ReportSection, write_report

Shown = list[tuple[str, Explanation]]  # (name, explanation) pairs for the interactive viewer

SAMPLE_PHOTOS = ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")


def sample_path(name: str) -> Path:
    """Path of a bundled sample image."""
    return Path(str(resources.files("mmcam.data") / "samples" / name))


def _classification_section(out: Path, shown: Shown) -> ReportSection:
    adapter = load("efficientnet_lite0")
    figures = []
    paths = [sample_path(name) for name in SAMPLE_PHOTOS]
    for path, explanation in zip(paths, adapter.explain_batch(paths), strict=True):
        written = explanation.save(out / "classify", path.stem)
        shown.append((f"classify: {path.name}", explanation))
        top = explanation.info["predictions"][0]
        caption = f"{path.name}: {top['label']} (p={top['probability']:.2f}), Grad-CAM on {explanation.layer}"
        figures.append((f"classify/{path.stem}_strip.png", caption))
        figures.append((str(Path(written[0]["guided"]).relative_to(out)), f"{path.name}: Guided Grad-CAM"))
    return ReportSection(
        "Classification: EfficientNet-Lite0 (ImageNet)",
        figures,
        text="Grad-CAM of the top prediction on the last convolutional features (bn2, 7x7).",
    )


DEMO_QUESTIONS = ((3, "what color is the shape?"), (11, "what shape is in the image?"), (29, "is there a blue shape?"))


def _caption_section(out: Path, shown: Shown) -> ReportSection:
    from .data.scenes import make_split

    adapter = load("shapes-captioner")
    figures = []
    scenes = [scene for scene in make_split("test", 30) if len(scene.objects) >= 2][:3]
    for index, scene in enumerate(scenes):
        explanation = adapter.explain(scene.image)  # generate the caption, then explain each word
        stem = f"scene{index}"
        explanation.save(out / "caption", stem)
        shown.append((f"caption: {stem}", explanation))
        caption = f"generated: '{explanation.info['caption']}' ({explanation.method} on {explanation.layer})"
        figures += [
            (f"caption/{stem}_strip.png", caption),
            (f"caption/{stem}_attention.png", "the model's own attention at each word"),
            (f"caption/{stem}_guided.png", "Guided Grad-CAM per word"),
        ]
    return ReportSection(
        "Captioning: the shipped shapes-captioner, word by word",
        figures,
        text="One heatmap per word, all words from one forward pass; beside them the attention the model used.",
    )


def _vqa_section(out: Path, shown: Shown) -> ReportSection:
    import easy_vqa

    adapter = load("easy-vqa")
    paths = easy_vqa.get_test_image_paths()
    images = [paths[image_id] for image_id, _ in DEMO_QUESTIONS]
    questions = [question for _, question in DEMO_QUESTIONS]
    figures = []
    for (image_id, question), explanation in zip(DEMO_QUESTIONS, adapter.explain_batch(images, questions, top=3), strict=True):
        stem = f"image{image_id}"
        explanation.save(out / "vqa", stem)
        shown.append((f"vqa: {stem}", explanation))
        figures.append((f"vqa/{stem}_strip.png", f"{question} -> {explanation.info['answer']}: the 3 best answers, question words coloured by attribution"))
    return ReportSection(
        "VQA: the shipped easy-VQA model, answer by answer",
        figures,
        text="Per answer, where the model looked; per question word, gradient x embedding of the predicted answer's score.",
    )


SECTIONS: list[Callable[[Path, Shown], ReportSection]] = [_classification_section, _caption_section, _vqa_section]


def run_demo(out: Path) -> Path:
    """Run every demo section into ``out``, write the interactive ``viewer.html`` over all of
    its explanations, and return the path of ``index.html`` (which links the viewer)."""
    shown: Shown = []
    sections = [build(out, shown) for build in SECTIONS]
    viewer = write_explanations(out / "viewer.html", shown, title="mmcam demo")
    link = ReportSection(
        "Interactive viewer",
        [],
        text="Hover or use the arrow keys over a caption's words or a question's answers to see each map; "
        "switch between the map, counterfactual, contrastive and Guided views and the model's attention.",
        links=[(viewer.name, "open viewer.html")],
    )
    return write_report(out / "index.html", "mmcam demo", [link, *sections])
