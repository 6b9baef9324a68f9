"""Per-template easy-VQA accuracy of a shapes-llava folder: ``python -m models.llava_vqa_breakdown FOLDER``.

Questions are grouped by template (colour/shape word replaced by its slot) and, for yes/no
templates, by the right answer, so the answer prior and the comparison with the image can be told
apart. ``--split heldout`` (default): all questions about the held-out easy-VQA train images
3800-3999 (checkpoint selection); ``--split test``: all test questions (report only). Answers come
from the shipped ``generate_answers`` through the processor, the folder loaded as saved.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from mmcam.models.shapes_llava import generate_answers, load_shapes_llava
from models.llava_yes_no import template_of
from models.train_llava import VQA_VAL_IMAGES, easy_vqa_examples


def breakdown(questions: Sequence[str], answers: Sequence[str], predicted: Sequence[str]
              ) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(template, answer or "word"): (right, total)}``; yes/no templates split by their right answer."""
    table: dict[tuple[str, str], tuple[int, int]] = {}
    for question, answer, guess in zip(questions, answers, predicted, strict=True):
        key = (template_of(question)[0], answer if answer in ("yes", "no") else "word")
        right, total = table.get(key, (0, 0))
        table[key] = (right + (guess == answer), total + 1)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--split", choices=("heldout", "test"), default="heldout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.split == "heldout":
        examples = easy_vqa_examples("train", 128, 16, set(range(4000 - VQA_VAL_IMAGES, 4000)))
    else:
        examples = easy_vqa_examples("test", 128, 16)
    model, processor = load_shapes_llava(args.folder)
    rows = range(len(examples))
    prompts = [examples.prompts(processor, [row])[0] for row in rows]
    predicted = generate_answers(model, processor, examples.image_list(rows), prompts)
    table = breakdown(examples.questions, examples.answers, predicted)
    groups: dict[str, list[int]] = {"word": [0, 0], "yes/no": [0, 0]}
    print(f"{args.split}: {len(examples)} questions")
    for (template, answer), (right, total) in sorted(table.items()):
        print(f"  {template:45s} {answer:4s} {right:5d} / {total:5d}  {100 * right / total:6.2f}%")
        group = groups["word" if answer == "word" else "yes/no"]
        group[0] += right
        group[1] += total
    for name, (right, total) in groups.items():
        print(f"{name}: {right} / {total} = {100 * right / max(1, total):.2f}%")
    right = sum(r for r, _ in table.values())
    print(f"all: {right} / {len(examples)} = {100 * right / len(examples):.2f}%")


if __name__ == "__main__":
    main()
