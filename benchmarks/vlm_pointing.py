"""Word and answer pointing of shapes-llava (issue 12) at each of LLaVA's layer choices.

    python benchmarks/vlm_pointing.py                      # 200 scenes, 300 questions, markdown
    python benchmarks/vlm_pointing.py --scenes 40 --questions 40 --json
    python benchmarks/vlm_pointing.py --scenes 6 --questions 0 --sanity 6   # + cascading randomisation

Captions: the model's own greedy caption of each generated test scene (the first ``--scenes``).
Each ``a COLOUR SHAPE`` phrase of it names the scene object of that colour (the one of that colour
and shape where several share the colour); a phrase that names no single object (a colour not in
the scene, or two objects alike) is left out, and a misnamed shape still points at the object its
colour names. Every colour and shape word of the named objects is scored as the shipped
captioner's table is (:func:`mmcam.eval.grounding.caption_grounding`: the map's peak inside the
object's box grown by 6 px), every method and its Guided variant at each layer choice, all words of
a scene from one pass; beside them the model's own attention from each word's step to the image
tokens (mean over the language model's layers and heads; eager attention) and the baselines.
``--captions truth`` teacher-forces the ground-truth captions instead.

VQA: the first ``--questions`` easy-VQA test questions whose answer is a colour or a shape, the
model's greedy answer explained (:func:`mmcam.eval.answers.answer_grounding`: the peak on the
shape, pixels far from the background grown by 3 px); attention: from the rows that predict the
answer's tokens, mean over them, layers and heads.

Sanity (``--sanity N``, off by default): cascading randomisation of the language model (``lm_head``
first, then its modules from the top down) on the words of the first N captioned scenes; the
Spearman correlation with the trained model's maps after the first and the last step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmcam.core.maps import at_size  # noqa: E402
from mmcam.core.methods import METHODS  # noqa: E402
from mmcam.data.scenes import Scene, word_kind  # noqa: E402

TOWER, PROJECTOR, LANGUAGE = "model.vision_tower.encoder.layers", "model.multi_modal_projector", "model.language_model.layers"


def layer_choices(model: torch.nn.Module) -> list[str]:
    """The layer choices of a LLaVA: the tower block the language model reads, the projector, and
    every language-model layer but the last (whose image states reach no scored token)."""
    from mmcam.adapters.hf.llava import tower_layer

    count = len(model.get_submodule(LANGUAGE))
    return [tower_layer(model), PROJECTOR, *(f"{LANGUAGE}.{k}" for k in range(count - 1))]


def referents(scene: Scene, words: Sequence[str]) -> tuple[int | None, ...]:
    """For each word of a caption ``words``, the scene object its ``a COLOUR SHAPE`` phrase
    names (see the module docstring), or None."""
    named: list[int | None] = [None] * len(words)
    for position in range(len(words) - 1):
        colour, shape = words[position], words[position + 1]
        if word_kind(colour) != "color" or word_kind(shape) != "shape":
            continue
        same_colour = [k for k, obj in enumerate(scene.objects) if obj.color == colour]
        if len(same_colour) > 1:
            same_colour = [k for k in same_colour if scene.objects[k].shape == shape]
        if len(same_colour) == 1:
            named[position] = named[position + 1] = same_colour[0]
    return tuple(named)


def generated_scenes(captioner, scenes: Sequence[Scene], batch: int = 50) -> tuple[list[Scene], dict[str, float]]:
    """The scenes with the model's own captions (and their words' objects), scenes whose caption
    names no object left out; and counts: exact captions, words scored, words right."""
    scorer = captioner.scorer
    out, exact, scored, right = [], 0, 0, 0
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        captions = scorer.generate_batch(torch.stack([scorer.preprocess(scene.image) for scene in chunk]), 1)
        for scene, caption in zip(chunk, captions, strict=True):
            words = tuple(caption.words)
            exact += " ".join(words) == scene.caption
            objects = referents(scene, words)
            named = [(w, k) for w, k in enumerate(objects) if k is not None]
            scored += len(named)
            right += sum(words[w] in (scene.objects[k].color, scene.objects[k].shape) for w, k in named)
            if named:
                out.append(dataclasses.replace(scene, caption=" ".join(words), words=words, word_objects=objects))
    counts = {"scenes": len(scenes), "exact_captions": exact, "words_scored": scored, "words_right": right}
    return out, counts


def caption_table(folder: str, scenes: Sequence[Scene], layers: Sequence[str] | None, captions: str) -> dict:
    """Per layer choice, :func:`caption_grounding` of every method, attention and baselines."""
    import mmcam
    from mmcam.eval.grounding import caption_grounding

    default = mmcam.load(folder)
    chosen = list(layers or layer_choices(default.scorer.model))
    counts: dict[str, float] = {"scenes": len(scenes)}
    if captions == "generated":
        scenes, counts = generated_scenes(default, scenes)
    results, seconds = {}, {}
    for layer in chosen:
        adapter = mmcam.load(folder, layer=layer)
        adapter.scorer.attention = True
        start = time.process_time()
        results[layer] = caption_grounding(adapter, scenes, methods=tuple(METHODS))
        seconds[layer] = time.process_time() - start
    return {"layers": chosen, "counts": counts, "results": results, "seconds": seconds, "scenes": scenes}


def sanity_table(folder: str, scenes: Sequence[Scene], layers: Sequence[str]) -> dict:
    """Cascading randomisation (Adebayo et al.) of the language model, per layer choice: the
    Spearman correlation of every word's map with the trained model's after re-initialising
    ``lm_head`` (step 1), then the language model's modules from the top down to its embeddings
    (the last step), one module a step (:func:`mmcam.eval.sanity.cascading_randomization`)."""
    import mmcam
    from mmcam.eval.sanity import captioner_maps, cascading_randomization

    def language_model(adapter) -> torch.nn.Module:
        model = adapter.scorer.model
        return torch.nn.ModuleDict({"language_model": model.model.language_model, "lm_head": model.lm_head})

    results = {}
    for layer in layers:
        adapter = mmcam.load(folder, layer=layer)
        steps = cascading_randomization(adapter, captioner_maps(scenes, tuple(METHODS)), model_of=language_model)
        results[layer] = {
            name: {"lm_head": values["randomized_spearman"][0], "whole_lm": values["randomized_spearman"][-1], "steps": len(values["layers"])}
            for name, values in steps.items()
        }
    return results


def vqa_table(folder: str, questions: int, layers: Sequence[str] | None) -> dict:
    """Per layer choice, :func:`answer_grounding` of every method (predicted answer), with the
    language model's attention from the answer's steps scored alike."""
    import mmcam
    from mmcam.eval.answers import answer_grounding
    from mmcam.eval.datasets import easy_vqa_items

    items = easy_vqa_items([], questions, color_or_shape_only=True)
    default = mmcam.load(folder, task="vqa")
    chosen = list(layers or layer_choices(default.scorer.model))
    results, seconds = {}, {}
    for layer in chosen:
        adapter = mmcam.load(folder, layer=layer, task="vqa")
        start = time.process_time()
        results[layer] = answer_grounding(adapter, items, methods=tuple(METHODS), batch_size=50)
        seconds[layer] = time.process_time() - start
    attention = answer_attention_pointing(mmcam.load(folder), default, items)
    return {"layers": chosen, "n": len(items), "results": results, "attention": attention, "seconds": seconds}


def answer_attention_pointing(captioner, answerer, items) -> dict[str, float]:
    """Pointing of the language model's attention from the greedy answer's steps to the image
    tokens (mean over the answer's tokens, layers and heads), on the shape mask of each item;
    the answer is the captioner's greedy continuation of the question's prompt."""
    from mmcam.eval.faithfulness import grow_background_mask
    from mmcam.eval.pointing import pointing_hit

    hits, correct = [], 0
    for item in items:
        scorer = dataclasses.replace(captioner.scorer, prefix=answerer.scorer.tokenize(item.question).ids, attention=True)
        pixels = scorer.preprocess(item.image)[None]
        answer = scorer.generate(pixels, 1)
        correct += " ".join(answer.words) == item.answer
        with torch.no_grad():
            attention = scorer.score(pixels, torch.tensor([answer.ids])).attention[0].mean(dim=0)
        heatmap = at_size(attention, item.image.shape[:2]).numpy()
        hits.append(float(pointing_hit(heatmap, grow_background_mask(item.image, grow=3))))
    return {"pointing": float(np.mean(hits)), "accuracy": correct / max(len(items), 1), "n": len(items)}


def _short(layer: str) -> str:
    """``tower 3``, ``projector``, ``LM 0`` for the table's header."""
    for prefix, short in ((f"{TOWER}.", "tower "), (PROJECTOR, "projector"), (f"{LANGUAGE}.", "LM ")):
        if layer.startswith(prefix):
            return short + layer[len(prefix) :]
    return layer


def markdown(captions: dict | None, vqa: dict | None) -> str:
    """Markdown tables: caption word pointing (all / colour / shape) and VQA answer pointing, one
    column per layer choice, one row per map."""
    lines = []
    if captions is not None:
        layers = captions["layers"]
        lines += ["Caption words: pointing, all (colour / shape)", "",
                  "| map | " + " | ".join(_short(layer) for layer in layers) + " |", "|---" * (len(layers) + 1) + "|"]
        names = list(captions["results"][layers[0]])
        for name in names:
            cells = []
            for layer in layers:
                scores = captions["results"][layer].get(name, {})
                cells.append(f"{scores['pointing']:.3f} ({scores['pointing_color']:.3f} / {scores['pointing_shape']:.3f})" if scores else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        first = captions["results"][layers[0]]["center"]
        lines += ["", f"words: {first['n_words']} ({first['n_color']} colour, {first['n_shape']} shape); {json.dumps(captions['counts'])}"]
    if captions is not None and captions.get("sanity"):
        sanity, layers = captions["sanity"], list(captions["sanity"])
        lines += ["", f"Sanity: Spearman with the trained maps after re-initialising lm_head / the whole language model "
                  f"({captions['sanity_scenes']} scenes)", "",
                  "| map | " + " | ".join(_short(layer) for layer in layers) + " |", "|---" * (len(layers) + 1) + "|"]
        for name in sanity[layers[0]]:
            cells = [f"{sanity[layer][name]['lm_head']:.2f} / {sanity[layer][name]['whole_lm']:.2f}" for layer in layers]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if vqa is not None:
        layers = vqa["layers"]
        lines += ["", "VQA answers (predicted): pointing", "",
                  "| map | " + " | ".join(_short(layer) for layer in layers) + " |", "|---" * (len(layers) + 1) + "|"]
        for name in vqa["results"][layers[0]]:
            if name == "model":
                continue
            cells = [f"{vqa['results'][layer][name]['pointing']:.3f}" for layer in layers]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        attention = vqa["attention"]
        lines.append(f"| attention | " + " | ".join([f"{attention['pointing']:.3f}"] * len(layers)) + " |")
        lines += ["", f"questions: {vqa['n']}; model accuracy on them {vqa['results'][layers[0]]['model']['accuracy']:.3f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava", help="shapes-llava or hf:FOLDER of a LLaVA")
    parser.add_argument("--scenes", type=int, default=200, help="first N generated test scenes (0: no caption table)")
    parser.add_argument("--questions", type=int, default=300, help="first N colour/shape easy-VQA test questions (0: none)")
    parser.add_argument("--captions", choices=("generated", "truth"), default="generated")
    parser.add_argument("--layer", action="append", help="layer choices (default: tower block read, projector, LM layers)")
    parser.add_argument("--sanity", type=int, default=0, help="cascading randomisation of the language model on N of the scenes")
    parser.add_argument("--json", action="store_true", help="print the full results as JSON after the tables")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from mmcam.data.scenes import make_split

    start, cpu = time.perf_counter(), time.process_time()
    captions = caption_table(args.model, make_split("test", args.scenes), args.layer, args.captions) if args.scenes else None
    if captions is not None and args.sanity:
        captions["sanity"] = sanity_table(args.model, captions["scenes"][: args.sanity], captions["layers"])
        captions["sanity_scenes"] = min(args.sanity, len(captions["scenes"]))
    vqa = vqa_table(args.model, args.questions, args.layer) if args.questions else None
    print(markdown(captions, vqa))
    print(
        f"\n{time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU, 1 torch thread, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if args.json:
        if captions is not None:
            captions.pop("scenes")
        print(json.dumps({"captions": captions, "vqa": vqa}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
