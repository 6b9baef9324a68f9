"""The shipped decoder-only vision-language model ``shapes-llava``: a transformers
``LlavaForConditionalGeneration`` (small CLIP ViT, standard projector, small Llama) trained on the
generated scenes (captions) and easy-VQA (questions). Training script and card: ``models/train_llava.py``
and ``models/shapes_llava.md``.

The folder is a plain ``save_pretrained`` checkpoint (model + ``LlavaProcessor``), so it loads with
``AutoProcessor`` and ``LlavaForConditionalGeneration`` like any user checkpoint. This module holds
what training and inference must share: the folder's location, the prompts (built with the
processor's own chat template) and greedy generation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration, ProcessorMixin

DEFAULT_FOLDER = Path(__file__).resolve().parent / "weights" / "shapes-llava"
CAPTION_INSTRUCTION = "Describe the image."
# Longest answer the model was trained on: 3 objects = 11 caption words, each one token, plus the end token.
MAX_NEW_TOKENS = 16


def caption_messages() -> list[dict]:
    """The chat (one user turn: the image, then the caption instruction) that asks for a caption."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_INSTRUCTION}]}]


def vqa_messages(question: str) -> list[dict]:
    """The chat (one user turn: the image, then ``question``) that asks a question about the image."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def caption_prompt(processor: ProcessorMixin) -> str:
    """``"USER: <image>\\nDescribe the image. ASSISTANT:"``, rendered by the processor's chat template."""
    return processor.apply_chat_template(caption_messages(), add_generation_prompt=True)


def vqa_prompt(processor: ProcessorMixin, question: str) -> str:
    """``"USER: <image>\\n{question} ASSISTANT:"``, rendered by the processor's chat template."""
    return processor.apply_chat_template(vqa_messages(question), add_generation_prompt=True)


def answer_text(answer: str, eos_token: str) -> str:
    """What follows the prompt in a training sequence: a space, the answer or caption, the end token."""
    return f" {answer}{eos_token}"


def load_shapes_llava(
    folder: str | os.PathLike | None = None,
) -> tuple[LlavaForConditionalGeneration, ProcessorMixin]:
    """``(model, processor)`` from ``folder`` (default: the shipped one); the model in eval mode, float32, CPU."""
    path = Path(folder) if folder is not None else DEFAULT_FOLDER
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no shapes-llava checkpoint in {path}: expected config.json from save_pretrained")
    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    return model.eval(), processor


@torch.no_grad()
def generate_answers(
    model: LlavaForConditionalGeneration,
    processor: ProcessorMixin,
    images: Sequence[Image.Image | object],
    prompts: Sequence[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 100,
) -> list[str]:
    """Greedy answers (or captions), one per (image, prompt) pair, stripped of special tokens and spaces.

    Prompts are run in groups of equal token length, so no row is ever padded and a batch gives
    exactly what one-at-a-time generation gives.
    """
    if len(images) != len(prompts):
        raise ValueError(f"need one prompt per image; got {len(images)} images and {len(prompts)} prompts")
    lengths = [len(processor.tokenizer(prompt)["input_ids"]) for prompt in prompts]
    answers: list[str] = [""] * len(prompts)
    for length in sorted(set(lengths)):
        same_length = [row for row, row_length in enumerate(lengths) if row_length == length]
        for start in range(0, len(same_length), batch_size):
            rows = same_length[start : start + batch_size]
            _generate_rows(model, processor, images, prompts, rows, max_new_tokens, answers)
    return answers


def _generate_rows(model: LlavaForConditionalGeneration, processor: ProcessorMixin, images: Sequence,
                   prompts: Sequence[str], rows: list[int], max_new_tokens: int, answers: list[str]) -> None:
    """Greedy-generate for ``rows`` (prompts of one token length) and write their texts into ``answers``."""
    inputs = processor(images=[images[row] for row in rows], text=[prompts[row] for row in rows], return_tensors="pt")
    generated = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    texts = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    for row, text in zip(rows, texts, strict=True):
        answers[row] = text.strip()
