"""The JSON records the CLI prints: public contracts, one builder per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .explanation import Explanation


def _place(explanation: Explanation, target: int, heatmap: str | None) -> dict[str, Any]:
    peak, box = explanation.place(target)  # both None for an all-zero map
    return {
        "peak_xy": None if peak is None else list(peak),
        "bbox": None if box is None else list(box),
        "heatmap": heatmap,
    }


def _head(explanation: Explanation, image: str) -> dict[str, Any]:
    return {"image": image, "model": explanation.model, "layer": explanation.layer, "method": explanation.method}


def _heatmap_paths(explanation: Explanation, written: Sequence[dict[str, str]] | None) -> list[str | None]:
    return [paths["heatmap"] for paths in written] if written else [None] * len(explanation)


def classify_record(explanation: Explanation, image: str, written: Sequence[dict[str, str]] | None) -> dict[str, Any]:
    """``mmcam classify --json``: image, model, layer, method, top-5 predictions, explanations."""
    heatmaps = _heatmap_paths(explanation, written)
    return {
        **_head(explanation, image),
        "predictions": explanation.info["predictions"],
        "explanations": [
            {
                "target": label,
                "index": int(index),
                "score": float(score),
                **_place(explanation, t, heatmaps[t]),
            }
            for t, (label, index, score) in enumerate(
                zip(explanation.labels, explanation.indices, explanation.scores, strict=True)
            )
        ],
        "guided_backprop": explanation.guided_backprop,
    }


def caption_record(explanation: Explanation, image: str, written: Sequence[dict[str, str]] | None) -> dict[str, Any]:
    """``mmcam caption --json``: image, model, layer, method, caption, one entry per word."""
    heatmaps = _heatmap_paths(explanation, written)
    return {
        **_head(explanation, image),
        "caption": explanation.info["caption"],
        "words": [
            {
                "word": word,
                "index": int(index) if index >= 0 else None,
                "logprob": float(logprob),
                **_place(explanation, t, heatmaps[t]),
            }
            for t, (word, index, logprob) in enumerate(
                zip(explanation.labels, explanation.indices, explanation.info["logprobs"], strict=True)
            )
        ],
        "guided_backprop": explanation.guided_backprop,
    }


def vqa_record(explanation: Explanation, image: str, written: Sequence[dict[str, str]] | None) -> dict[str, Any]:
    """``mmcam vqa --json``: the model's answer, its top answers, one entry per explained
    answer, and the question words' attributions for the first explained answer."""
    heatmaps = _heatmap_paths(explanation, written)
    info = explanation.info
    attributions = info.get("word_attributions")
    return {
        "image": image,
        "question": info["question"],
        "model": explanation.model,
        "layer": explanation.layer,
        "method": explanation.method,
        "answer": info["answer"],
        "probability": info["probability"],
        "top": info["top"],
        "explanations": [
            {"answer": answer, "score": float(score), **_place(explanation, t, heatmaps[t])}
            for t, (answer, score) in enumerate(zip(explanation.labels, explanation.scores, strict=True))
        ],
        "question_words": [
            {"word": word, "attribution": None if attributions is None else float(attributions[0][w])}
            for w, word in enumerate(info["question_words"])
        ],
        "guided_backprop": explanation.guided_backprop,
    }
