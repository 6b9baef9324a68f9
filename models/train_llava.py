"""Train the shipped decoder-only VLM ``shapes-llava``: ``python -m models.train_llava``.

Builds everything offline: a byte-level BPE tokenizer learned from the scenes' captions, easy-VQA's
train questions and answers and the chat prompt words (``<image>`` an added special token), a
``LlavaProcessor`` with a chat template, and a ``LlavaForConditionalGeneration`` (small CLIP ViT,
standard projector, small Llama) from configs. Three stages:

1. the vision tower alone on dense targets from the scene masks and easy-VQA's segmented objects
   (``models/llava_vision_stage.py``): per-patch colour, shape and outline, and the objects left to
   right; training-only heads, not saved;
2. the whole LLaVA on mixed batches of scene captions and easy-VQA questions, the loss on the answer
   tokens only, plus the per-patch colour/shape loss on every image;
3. fine-tuning that teaches the yes/no questions to compare the asked word with the image
   (``models/llava_yes_no.py``): first (3a) captions + balanced yes/no questions in easy-VQA's not
   negated templates only, then captions + easy-VQA's questions + balanced yes/no questions in all
   its templates, both with training-only heads that read the asked word and whether it names the
   object at the answer position.

Keeps the stage-2 and stage-3 checkpoints with the best validation score, saves model + processor with
``save_pretrained``, reloads the folder and reports caption exact match on the scenes test split and
easy-VQA test accuracy through the processor. Seeded: the same command on the same machine and
thread count gives the same weights. ``--save-stage1`` / ``--load-stage1`` and ``--load-stage2``
split the stages over runs with the same arguments.

``--evaluate FOLDER`` only evaluates a saved folder on the test splits.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import easy_vqa
import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mmcam.data.scenes import COLORS, SHAPES, iter_split
from mmcam.models.easy_vqa_data import load_split_questions
from mmcam.models.shapes_llava import (
    CAPTION_INSTRUCTION,
    DEFAULT_FOLDER,
    MAX_NEW_TOKENS,
    answer_text,
    caption_prompt,
    generate_answers,
    load_shapes_llava,
    vqa_prompt,
)
from models.llava_vision_stage import (
    VisionHeads,
    VisionLabels,
    easy_vqa_labels,
    scene_labels,
    train_vision,
)
from models.llava_yes_no import (
    AnswerHeads,
    QuestionTemplate,
    answer_targets,
    generated_questions,
    question_templates,
    template_of,
)
from models.train_captioner import learning_rate

SCENE_SIZE = 128  # the generated scenes' side; easy-VQA images are 64x64
PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
# LLaVA-1.5's conversation format; a user turn holds the image then the text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}{% else %}{{ 'ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\\n' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' ' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
VQA_VAL_IMAGES = 200  # the last easy-VQA train images are held out for checkpoint selection


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Examples:
    """(image, prompt question or None for a caption, answer) triples over shared image arrays.

    images: (I, s, s, 3) uint8 as the dataset gives them (what the processor gets at evaluation);
    pixels: (I, S, S, 3) uint8, the same images at the model's input size, resized as the processor
    resizes (PIL bicubic), so training batches skip the slow image processor; image_rows: (N,) row
    of each example's image; questions: None asks for a caption; labels: the vision stage's targets
    of each image (training splits only).
    """

    images: np.ndarray
    pixels: np.ndarray
    image_rows: np.ndarray
    questions: list[str | None]
    answers: list[str]
    labels: VisionLabels | None = None

    def __len__(self) -> int:
        return len(self.answers)

    def subset(self, rows: Sequence[int]) -> Examples:
        """The examples ``rows`` (over the same image arrays)."""
        return Examples(self.images, self.pixels, self.image_rows[list(rows)], [self.questions[r] for r in rows],
                        [self.answers[r] for r in rows], self.labels)

    def prompts(self, processor: LlavaProcessor, rows: Sequence[int]) -> list[str]:
        return [caption_prompt(processor) if self.questions[row] is None else vqa_prompt(processor, self.questions[row])
                for row in rows]

    def image_list(self, rows: Sequence[int]) -> list[np.ndarray]:
        return [self.images[self.image_rows[row]] for row in rows]

    def label_batch(self, image_indices: np.ndarray) -> dict[str, torch.Tensor]:
        """The vision targets of images ``image_indices`` as tensors (``patches``, ``outline``, ``slots``)."""
        assert self.labels is not None
        return {name: torch.from_numpy(getattr(self.labels, name)[image_indices])
                for name in ("patches", "outline", "slots")}


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """``(I, size, size, 3)`` uint8: square ``images`` resized as ``CLIPImageProcessor`` does (PIL bicubic)."""
    if images.shape[1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)) for image in images])


def scene_examples(split: str, n: int, image_size: int, patch_size: int, with_labels: bool = False) -> Examples:
    """The first ``n`` scenes of ``split`` as caption examples (with the vision targets if ``with_labels``)."""
    scenes = list(iter_split(split, n))
    images = np.stack([scene.image for scene in scenes])
    labels = scene_labels(scenes, patch_size * SCENE_SIZE // image_size) if with_labels else None
    return Examples(images, resized(images, image_size), np.arange(n), [None] * n,
                    [scene.caption for scene in scenes], labels)


def easy_vqa_examples(split: str, image_size: int, patch_size: int, image_ids: set[int] | None = None,
                      with_labels: bool = False) -> Examples:
    """easy-VQA ``split`` questions (only those about ``image_ids`` when given), in the split's order."""
    questions, answers, question_image_ids = load_split_questions(split)
    keep = [row for row, image_id in enumerate(question_image_ids) if image_ids is None or image_id in image_ids]
    paths = (easy_vqa.get_train_image_paths if split == "train" else easy_vqa.get_test_image_paths)()
    distinct = sorted({question_image_ids[row] for row in keep})
    row_of_image = {image_id: row for row, image_id in enumerate(distinct)}
    images = np.stack([_load_rgb(paths[image_id]) for image_id in distinct])
    labels = easy_vqa_labels(images, patch_size * images.shape[1] // image_size) if with_labels else None
    image_rows = np.array([row_of_image[question_image_ids[row]] for row in keep])
    return Examples(images, resized(images, image_size), image_rows, [questions[row] for row in keep],
                    [answers[row] for row in keep], labels)


def _load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------------- tokenizer, processor, model
def _tokenizer_corpus() -> list[str]:
    """Every caption word in every position it takes, all easy-VQA train questions and answers, the prompts."""
    captions = [f"a {color} {shape} and a {color} {shape}" for color in COLORS for shape in SHAPES]
    questions, answers, _ = load_split_questions("train")
    texts = [f"USER: {IMAGE}\n{CAPTION_INSTRUCTION} ASSISTANT: {caption}{EOS}" for caption in captions]
    texts += [f"USER: {IMAGE}\n{question} ASSISTANT: {answer}{EOS}"
              for question, answer in sorted(set(zip(questions, answers, strict=True)))]
    return texts


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes; every word of the training texts is one token), BOS added."""
    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, min_frequency=1, special_tokens=[PAD, BOS, EOS, IMAGE],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_tokenizer_corpus(), trainer)
    bpe.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, bpe.token_to_id(BOS))]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   extra_special_tokens={"image_token": IMAGE}, model_max_length=256)


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """CLIP image processor (``image_size`` square, pixels to [-1, 1]) + the tokenizer + the chat template."""
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE)


def build_model(tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> LlavaForConditionalGeneration:
    """Randomly initialised LLaVA: CLIP ViT (CLS + a grid of patches) -> 2-layer MLP -> Llama."""
    vision = CLIPVisionConfig(hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
                              num_hidden_layers=args.vision_layers, num_attention_heads=4, image_size=args.image_size,
                              patch_size=args.patch_size, projection_dim=args.vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.text_hidden, intermediate_size=args.text_intermediate,
                       num_hidden_layers=args.text_layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                         image_seq_length=(args.image_size // args.patch_size) ** 2, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config)
    if args.position_init == "sincos":
        _init_sincos_positions(model)
    for settings in (model.config, model.generation_config):
        settings.bos_token_id, settings.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        settings.pad_token_id = tokenizer.pad_token_id
    return model


def _init_sincos_positions(model: LlavaForConditionalGeneration) -> None:
    """Start the ViT's learned position embeddings ``(1 + G*G, C)`` at 2-D sine-cosine codes (CLS at 0).

    Channels ``[0, C/2)`` code the patch column and ``[C/2, C)`` its row, each as sines then cosines
    at geometric frequencies; they stay trainable. Left-to-right order is then readable from step 0.
    """
    table = model.model.vision_tower.embeddings.position_embedding.weight
    vision = model.config.vision_config
    grid, channels = vision.image_size // vision.patch_size, table.shape[1]
    frequencies = 1.0 / 100.0 ** (torch.arange(channels // 4, dtype=torch.float32) / (channels // 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def code(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.flatten().float()[:, None] * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    with torch.no_grad():
        table.zero_()
        table[1:] = torch.cat([code(cols), code(rows)], dim=1)


# ------------------------------------------------------------------------------------- training
class BatchMaker:
    """Model inputs for a batch of examples: ``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``.

    What ``processor(images=..., text=..., padding=True)`` gives, built without its image processor
    (which costs more than the training step on this machine): ``pixel_values`` from the pre-resized
    ``Examples.pixels`` with the processor's own rescale and normalisation, ``<image>`` expanded to
    the model's image tokens before tokenising. ``check`` compares the two. Labels are -100 on the
    prompt (image tokens included) and padding, so the loss covers the answer and the end token only.
    """

    def __init__(self, processor: LlavaProcessor, image_tokens: int) -> None:
        self.processor = processor
        self.image_tokens = image_tokens
        image_processor = processor.image_processor
        self._scale = float(image_processor.rescale_factor)
        self._mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        self._std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)

    def pixel_values(self, pixels: np.ndarray) -> torch.Tensor:
        """``(B, 3, S, S)`` float32 from ``(B, S, S, 3)`` uint8 already at the model's input size."""
        values = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() * self._scale
        return (values - self._mean) / self._std

    def _expanded(self, texts: list[str]) -> list[str]:
        image = self.processor.image_token
        return [text.replace(image, image * self.image_tokens) for text in texts]

    def __call__(self, examples: Examples, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        prompts = examples.prompts(self.processor, rows)
        eos = self.processor.tokenizer.eos_token
        texts = [prompt + answer_text(examples.answers[row], eos) for prompt, row in zip(prompts, rows, strict=True)]
        inputs = dict(self.processor.tokenizer(self._expanded(texts), padding=True, return_tensors="pt"))
        inputs["pixel_values"] = self.pixel_values(examples.pixels[examples.image_rows[list(rows)]])
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        prompt_lengths = self.processor.tokenizer(self._expanded(prompts))["input_ids"]
        for index, prompt_ids in enumerate(prompt_lengths):
            labels[index, : len(prompt_ids)] = -100
        inputs["labels"] = labels
        return inputs

    def prompt_inputs(self, examples: Examples, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Generation inputs (prompt only) for ``rows``; prompts must have one token length (no padding)."""
        inputs = dict(self.processor.tokenizer(self._expanded(examples.prompts(self.processor, rows)),
                                               return_tensors="pt"))
        inputs["pixel_values"] = self.pixel_values(examples.pixels[examples.image_rows[list(rows)]])
        return inputs

    def check(self, examples: Examples, rows: Sequence[int]) -> None:
        """Raise unless this batch equals the processor's (pixels to 1e-5, token ids exactly)."""
        mine = self(examples, rows)
        prompts = examples.prompts(self.processor, rows)
        eos = self.processor.tokenizer.eos_token
        texts = [prompt + answer_text(examples.answers[row], eos) for prompt, row in zip(prompts, rows, strict=True)]
        theirs = self.processor(images=examples.image_list(rows), text=texts, padding=True, return_tensors="pt")
        if not (torch.equal(mine["input_ids"], theirs["input_ids"])
                and torch.equal(mine["attention_mask"], theirs["attention_mask"])
                and torch.allclose(mine["pixel_values"], theirs["pixel_values"], atol=1e-5)):
            raise RuntimeError("fast training batches differ from the processor's; fix BatchMaker before training")


@dataclass(frozen=True)
class Scores:
    caption_exact: float
    vqa_accuracy: float
    n_captions: int
    n_questions: int

    @property
    def combined(self) -> float:
        return (self.caption_exact + self.vqa_accuracy) / 2

    def __str__(self) -> str:
        return (f"caption exact match {100 * self.caption_exact:.2f}% (n={self.n_captions}), "
                f"VQA accuracy {100 * self.vqa_accuracy:.2f}% (n={self.n_questions})")


def accuracy(model: LlavaForConditionalGeneration, processor: LlavaProcessor, examples: Examples) -> float:
    """Fraction of greedy answers (captions) equal to the reference string (the shipped ``generate_answers``)."""
    rows = range(len(examples))
    predicted = generate_answers(model, processor, examples.image_list(rows), examples.prompts(processor, rows))
    return sum(p == examples.answers[row] for p, row in zip(predicted, rows, strict=True)) / max(1, len(examples))


@torch.no_grad()
def fast_accuracy(model: LlavaForConditionalGeneration, make_batch: BatchMaker, examples: Examples) -> float:
    """``accuracy`` with ``BatchMaker``'s inputs instead of the processor's (validation during training):
    greedy ``generate`` over groups of prompts of one token length, so no row is padded."""
    tokenizer = make_batch.processor.tokenizer
    prompts = examples.prompts(make_batch.processor, range(len(examples)))
    groups: dict[str, list[int]] = {}
    for row, prompt in enumerate(prompts):
        groups.setdefault(str(len(tokenizer(prompt)["input_ids"])), []).append(row)
    right = 0
    for rows in groups.values():
        for start in range(0, len(rows), 100):
            chunk = rows[start : start + 100]
            inputs = make_batch.prompt_inputs(examples, chunk)
            generated = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
            texts = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            right += sum(text.strip() == examples.answers[row] for text, row in zip(texts, chunk, strict=True))
    return right / max(1, len(examples))


def evaluate(model: LlavaForConditionalGeneration, processor: LlavaProcessor, captions: Examples,
             questions: Examples, make_batch: BatchMaker | None = None) -> Scores:
    """Caption exact match and VQA accuracy; through the processor, or ``make_batch``'s inputs when given."""
    was_training = model.training
    model.eval()
    if make_batch is None:
        scores = Scores(accuracy(model, processor, captions), accuracy(model, processor, questions),
                        len(captions), len(questions))
    else:
        scores = Scores(fast_accuracy(model, make_batch, captions), fast_accuracy(model, make_batch, questions),
                        len(captions), len(questions))
    model.train(was_training)
    return scores


def answer_balanced(examples: Examples) -> Examples:
    """``examples`` with rows repeated so each question template (colour and shape words masked) has
    every one of its answers equally often.

    easy-VQA's yes/no answers follow strong priors (a colour question is "no" 88% of the time when
    not negated), and the trained model answers them at about the prior's accuracy. Balancing was
    meant to force the comparison with the image; measured, it did not (off by default; see
    models/shapes_llava.md)."""
    words = sorted({*COLORS, *SHAPES}, key=len, reverse=True)
    groups: dict[str, dict[str, list[int]]] = {}
    for row, (question, answer) in enumerate(zip(examples.questions, examples.answers, strict=True)):
        template = question or ""
        for word in words:
            template = template.replace(word, "X")
        groups.setdefault(template, {}).setdefault(answer, []).append(row)
    rows: list[int] = []
    for by_answer in groups.values():
        most = max(len(answer_rows) for answer_rows in by_answer.values())
        for answer_rows in by_answer.values():
            rows += (answer_rows * (most // len(answer_rows) + 1))[:most]
    return examples.subset(sorted(rows))


class _Draws:
    """Seeded draws of example rows without replacement, a fresh permutation when one runs out."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.order, self.cursor = rng.permutation(size), 0

    def __call__(self, count: int) -> np.ndarray:
        if self.cursor + count > self.size:
            self.order, self.cursor = self.rng.permutation(self.size), 0
        self.cursor += count
        return self.order[self.cursor - count : self.cursor]


def pretrain_vision(model: LlavaForConditionalGeneration, heads: VisionHeads, caption_data: Examples,
                    vqa_data: Examples, val_scenes: Examples, make_batch: BatchMaker,
                    args: argparse.Namespace) -> dict[str, float]:
    """Stage 1: the vision tower alone on dense targets, batches of scenes and easy-VQA images."""
    rng = np.random.default_rng(args.seed + 1)
    scene_draws, vqa_draws = _Draws(len(caption_data.pixels), rng), _Draws(len(vqa_data.pixels), rng)
    n_vqa = round(args.vision_batch_size * args.vision_vqa_fraction)

    def batch(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scenes, images = scene_draws(args.vision_batch_size - n_vqa), vqa_draws(n_vqa)
        pixels = make_batch.pixel_values(np.concatenate([caption_data.pixels[scenes], vqa_data.pixels[images]]))
        parts = caption_data.label_batch(scenes), vqa_data.label_batch(images)
        return pixels, {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    assert val_scenes.labels is not None
    return train_vision(model.model.vision_tower, heads, batch,
                        (make_batch.pixel_values(val_scenes.pixels), val_scenes.labels),
                        steps=args.vision_steps, lr=args.vision_lr, warmup_steps=args.warmup_steps,
                        outline_weight=args.outline_loss_weight, slot_weight=args.slot_loss_weight,
                        eval_every=args.vision_eval_every, learning_rate=learning_rate)


@dataclass(frozen=True)
class Schedule:
    """One training stage's optimizer settings: ``steps`` AdamW steps, cosine learning rate peaking at
    ``lr`` (the vision tower at ``vision_lr_scale`` x ``lr``), ``seed`` for the example draws, and the
    weight of the per-patch colour/shape loss (0: no vision heads) and of the answer heads' loss;
    ``keep_best``: end with the best-on-val weights (else the last)."""

    steps: int
    lr: float
    vision_lr_scale: float
    seed: int
    patch_loss_weight: float
    answer_head_weight: float = 0.0
    keep_best: bool = True


def train(model: LlavaForConditionalGeneration, heads: VisionHeads | None, make_batch: BatchMaker,
          sources: Sequence[tuple[Examples, int]], val: tuple[Examples, Examples], schedule: Schedule,
          args: argparse.Namespace, extra_val: Sequence[tuple[str, Examples]] = (),
          answer_heads: AnswerHeads | None = None) -> Scores:
    """AdamW on answer-token cross-entropy over batches of ``count`` rows of each ``(examples, count)``
    source (+ the per-patch loss on every image when ``schedule.patch_loss_weight`` > 0); leaves the
    best-on-val weights in ``model`` (``schedule.keep_best``). ``extra_val``: (name, examples) only
    printed at each validation. ``answer_heads``: training-only heads on the answer position."""
    if schedule.patch_loss_weight > 0 and heads is None:
        raise ValueError("a per-patch loss weight > 0 needs the vision heads")
    vision = list(model.model.vision_tower.parameters())
    vision_ids = {id(parameter) for parameter in vision}
    rest = [parameter for parameter in model.parameters() if id(parameter) not in vision_ids]
    head_parameters = list(heads.parameters()) if heads is not None and schedule.patch_loss_weight > 0 else []
    answer_parameters = list(answer_heads.parameters()) if answer_heads is not None else []
    optimizer = torch.optim.AdamW([{"params": rest + head_parameters + answer_parameters, "scale": 1.0},
                                   {"params": vision, "scale": schedule.vision_lr_scale}],
                                  lr=schedule.lr, weight_decay=args.weight_decay)
    rng = np.random.default_rng(schedule.seed)
    draws = [(data, _Draws(len(data), rng), count) for data, count in sources if count > 0]
    best, best_state = Scores(-1.0, -1.0, 0, 0), copy.deepcopy(model.state_dict())
    started, running_loss, running_head = time.perf_counter(), 0.0, 0.0
    model.train()
    for step in range(schedule.steps):
        answer_loss, answer_tokens, patch_loss = torch.zeros(()), 0, torch.zeros(())
        head_loss, head_rows = torch.zeros(()), 0
        for data, draw, count in draws:
            rows = draw(count).tolist()
            batch = make_batch(data, rows)
            with _captured_patch_tokens(model) as tokens:
                loss, states = _answer_loss(model, batch, hidden_states=answer_heads is not None)
            answer_loss = answer_loss + loss
            answer_tokens += int((batch["labels"] != -100).sum())
            if answer_heads is not None and states is not None:
                positions = answer_positions(batch["labels"])
                words, matches = answer_targets([data.questions[r] for r in rows],
                                                _objects(data, data.image_rows[rows]))
                batch_rows = torch.arange(len(rows))
                head_loss = head_loss + answer_heads.loss(states[args.word_layer][batch_rows, positions],
                                                          states[args.match_layer][batch_rows, positions],
                                                          words, matches)
                head_rows += int((words != -100).sum())
            if head_parameters:
                labels = data.label_batch(data.image_rows[rows])
                patch_loss = patch_loss + heads.patch_loss(tokens[0][:, 1:], labels["patches"]) / len(draws)
        loss = answer_loss / answer_tokens + schedule.patch_loss_weight * patch_loss
        if head_rows:
            running_head += head_loss.item() / head_rows
            loss = loss + schedule.answer_head_weight * head_loss / head_rows
        for group in optimizer.param_groups:
            group["lr"] = group["scale"] * learning_rate(step, schedule.steps, schedule.lr, args.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        running_loss += loss.item()
        if (step + 1) % args.log_every == 0:
            heads_part = f" (answer heads {running_head / args.log_every:.4f})" if answer_heads is not None else ""
            print(f"step {step + 1}/{schedule.steps}  loss {running_loss / args.log_every:.4f}{heads_part}  "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
            running_loss, running_head = 0.0, 0.0
        if (step + 1) % args.eval_every == 0 or step + 1 == schedule.steps:
            scores = evaluate(model, make_batch.processor, *val, make_batch=make_batch)
            if scores.combined >= best.combined or not schedule.keep_best:
                best, best_state = scores, copy.deepcopy(model.state_dict())
            model.eval()
            extra = "".join(f", {name} {100 * fast_accuracy(model, make_batch, examples):.2f}%"
                            for name, examples in extra_val)
            model.train()
            print(f"step {step + 1}  val {scores}{extra}  {time.perf_counter() - started:.0f}s", flush=True)
    model.load_state_dict(best_state)
    model.eval()
    return best


@contextlib.contextmanager
def _captured_patch_tokens(model: LlavaForConditionalGeneration) -> Iterator[list[torch.Tensor]]:
    """Collects the output ``(B, 1 + G*G, C)`` of the last vision layer (the one the projector reads)."""
    captured: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, inputs: tuple, output: torch.Tensor | tuple) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = model.model.vision_tower.encoder.layers[-1].register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(B,)``: per row of ``labels`` ``(B, L)`` (-100 outside the answer), the position whose
    next-token prediction is the answer's first token (the prompt's last token)."""
    return (labels != -100).int().argmax(dim=1) - 1


def _answer_loss(model: LlavaForConditionalGeneration, batch: dict[str, torch.Tensor],
                 hidden_states: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Summed next-token cross-entropy over the labelled (answer) positions of ``batch``, and the
    language model's hidden states ``(B, L, C)`` per layer (embeddings first) when ``hidden_states``."""
    labels = batch["labels"]
    output = model(**{key: value for key, value in batch.items() if key != "labels"},
                   output_hidden_states=hidden_states)
    loss = torch.nn.functional.cross_entropy(output.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum")
    return loss, output.hidden_states if hidden_states else None


# ----------------------------------------------------------------------------------------- main
def test_splits(args: argparse.Namespace) -> tuple[Examples, Examples]:
    captions = scene_examples("test", args.n_test, args.image_size, args.patch_size)
    questions = easy_vqa_examples("test", args.image_size, args.patch_size)
    if args.n_vqa_test is not None and args.n_vqa_test < len(questions):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(questions), args.n_vqa_test, replace=False))
        questions = questions.subset(keep.tolist())
    return captions, questions


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_FOLDER, help="folder for save_pretrained")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="FOLDER",
                        help="only evaluate the checkpoint in FOLDER on the test splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128, help="side of the model's input image")
    parser.add_argument("--patch-size", type=int, default=16, help="ViT patch side (the grid is image/patch squared)")
    parser.add_argument("--vision-steps", type=int, default=1000, help="stage 1: vision-tower-only steps")
    parser.add_argument("--vision-batch-size", type=int, default=64, help="stage 1: images per step")
    parser.add_argument("--vision-vqa-fraction", type=float, default=0.25,
                        help="stage 1: share of easy-VQA images (the rest are scenes)")
    parser.add_argument("--vision-lr", type=float, default=2e-3, help="stage 1: peak learning rate")
    parser.add_argument("--vision-eval-every", type=int, default=100)
    parser.add_argument("--outline-loss-weight", type=float, default=1.0, help="stage 1: per-patch outline loss")
    parser.add_argument("--slot-loss-weight", type=float, default=1.0, help="stage 1: left-to-right object loss")
    parser.add_argument("--steps", type=int, default=1400, help="stage 2 (LLaVA) optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (captions + questions)")
    parser.add_argument("--caption-fraction", type=float, default=0.5, help="share of captions in each batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--vision-lr-scale", type=float, default=0.3,
                        help="stage 2: the vision tower's learning rate as a multiple of --lr")
    parser.add_argument("--balance-answers", action=argparse.BooleanOptionalAction, default=False,
                        help="stage 2: repeat easy-VQA questions so each template's answers are equally frequent "
                             "(measured worse: see models/shapes_llava.md)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 is fastest on a shared machine (2 threads stall each other)")
    parser.add_argument("--n-train", type=int, default=30_000, help="training scenes")
    parser.add_argument("--n-val", type=int, default=500, help="val scenes (checkpoint selection)")
    parser.add_argument("--n-vqa-val", type=int, default=1000,
                        help=f"held-out easy-VQA train questions (about its last {VQA_VAL_IMAGES} images) for selection")
    parser.add_argument("--n-test", type=int, default=1000, help="test scenes")
    parser.add_argument("--n-vqa-test", type=int, default=None, help="easy-VQA test questions (default: all)")
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--text-hidden", type=int, default=128)
    parser.add_argument("--text-intermediate", type=int, default=512)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--patch-loss-weight", type=float, default=0.5,
                        help="stage 2: weight of the training-only per-patch colour/shape loss")
    parser.add_argument("--position-init", choices=("learned", "sincos"), default="sincos",
                        help="start of the ViT position embeddings: transformers' random init or 2-D sine-cosine")
    parser.add_argument("--yes-no-steps", type=int, default=500,
                        help="stage 3 steps (0: none): fine-tuning with balanced yes/no questions")
    parser.add_argument("--yes-no-lr", type=float, default=5e-4, help="stage 3: peak learning rate")
    parser.add_argument("--yes-no-fraction", type=float, default=0.375,
                        help="stage 3: share of balanced yes/no questions in each batch")
    parser.add_argument("--yes-no-caption-fraction", type=float, default=0.375,
                        help="stage 3: share of captions in each batch (the rest: easy-VQA's own questions)")
    parser.add_argument("--scene-question-fraction", type=float, default=0.0,
                        help="stage 3: share of generated questions about the training scenes in each batch")
    parser.add_argument("--find-share", type=float, default=0.5,
                        help="stage 3: share of scene questions that name an object's shape or colour "
                             "(\"what is the red shape?\"); the rest are balanced yes/no")
    parser.add_argument("--plain-steps", type=int, default=250,
                        help="stage 3a steps before stage 3: captions + balanced yes/no questions in the not "
                             "negated templates only (the answer is then 'the word names the object')")
    parser.add_argument("--plain-lr", type=float, default=1e-3, help="stage 3a: peak learning rate")
    parser.add_argument("--plain-caption-fraction", type=float, default=0.125, help="stage 3a: share of captions")
    parser.add_argument("--answer-head-weight", type=float, default=0.5,
                        help="stage 3: weight of the training-only heads reading the asked word (at --word-layer) "
                             "and whether it names an object (at --match-layer) at the answer position")
    parser.add_argument("--word-layer", type=int, default=2,
                        help="stage 3: hidden state (0 = embeddings) of the word head")
    parser.add_argument("--match-layer", type=int, default=3, help="stage 3: hidden state of the match head")
    parser.add_argument("--yes-no-per-image", type=int, default=8,
                        help="stage 3: balanced yes/no questions generated per easy-VQA training image")
    parser.add_argument("--load-stage2", type=Path, default=None, metavar="FOLDER",
                        help="skip stages 1-2: start stage 3 from a saved folder (e.g. one written with "
                             "--yes-no-steps 0)")
    parser.add_argument("--test", action=argparse.BooleanOptionalAction, default=True,
                        help="report the test splits on the saved folder at the end")
    parser.add_argument("--save-stage1", type=Path, default=None, help="also save model + heads after stage 1 here")
    parser.add_argument("--load-stage1", type=Path, default=None,
                        help="skip stage 1: start stage 2 from a --save-stage1 file (same arguments otherwise)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.evaluate is not None:
        model, processor = load_shapes_llava(args.evaluate)
        print(f"test ({args.evaluate}): {evaluate(model, processor, *test_splits(args))}")
        print(f"wall time {time.perf_counter() - started:.0f}s")
        return

    sizes = (args.image_size, args.patch_size)
    train_ids = set(range(4000 - VQA_VAL_IMAGES))
    caption_data = scene_examples("train", args.n_train, *sizes, with_labels=True)
    vqa_data = easy_vqa_examples("train", *sizes, train_ids, with_labels=True)
    vqa_val = easy_vqa_examples("train", *sizes, set(range(4000 - VQA_VAL_IMAGES, 4000)), with_labels=True)
    drawn = np.random.default_rng(args.seed).permutation(len(vqa_val))[: args.n_vqa_val]
    vqa_val = vqa_val.subset(np.sort(drawn).tolist())
    val = (scene_examples("val", args.n_val, *sizes, with_labels=True), vqa_val)
    print(f"data: {len(caption_data)} train scenes, {len(vqa_data)} train questions; val {len(val[0])} scenes, "
          f"{len(val[1])} questions; {time.perf_counter() - started:.1f}s", flush=True)

    processor = build_processor(build_tokenizer(), *sizes)
    model = build_model(processor.tokenizer, args)
    make_batch = BatchMaker(processor, model.config.image_seq_length)
    for data in (caption_data, vqa_data, *val):
        make_batch.check(data, list(range(0, len(data), len(data) // 7))[:8])
    heads = VisionHeads(model.config.vision_config.hidden_size)
    print(f"vocabulary {len(processor.tokenizer)} tokens; {sum(p.numel() for p in model.parameters())} parameters; "
          f"caption prompt {caption_prompt(processor)!r}; fast batches equal the processor's", flush=True)
    stage1_started = time.perf_counter()
    if args.load_stage2 is not None:
        model, _ = load_shapes_llava(args.load_stage2)
        print(f"stages 1-2 loaded from {args.load_stage2}", flush=True)
        stage3(model, make_batch, caption_data, vqa_data, val, args)
        print(f"data {stage1_started - started:.0f}s, stage 3 {time.perf_counter() - stage1_started:.0f}s", flush=True)
        _save_and_test(model, processor, args, started)
        return
    if args.load_stage1 is not None:
        state = torch.load(args.load_stage1)
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        print(f"stage 1 loaded from {args.load_stage1}", flush=True)
    else:
        pretrain_vision(model, heads, caption_data, vqa_data, val[0], make_batch, args)
        if args.save_stage1 is not None:
            torch.save({"model": model.state_dict(), "heads": heads.state_dict()}, args.save_stage1)
    stage2_started = time.perf_counter()
    if args.balance_answers:
        vqa_data = answer_balanced(vqa_data)
        print(f"answer-balanced training questions: {len(vqa_data)}", flush=True)
    n_captions = round(args.batch_size * args.caption_fraction)
    best_val = train(model, heads, make_batch, [(caption_data, n_captions), (vqa_data, args.batch_size - n_captions)],
                     val, Schedule(args.steps, args.lr, args.vision_lr_scale, args.seed, args.patch_loss_weight), args)
    print(f"stage 2 best val: {best_val}", flush=True)
    stage3_started = time.perf_counter()
    stage3(model, make_batch, caption_data, vqa_data, val, args)
    finished = time.perf_counter()
    print(f"data {stage1_started - started:.0f}s, stage 1 {stage2_started - stage1_started:.0f}s, "
          f"stage 2 {stage3_started - stage2_started:.0f}s, stage 3 {finished - stage3_started:.0f}s", flush=True)
    _save_and_test(model, processor, args, started)


def _save_and_test(model: LlavaForConditionalGeneration, processor: LlavaProcessor, args: argparse.Namespace,
                   started: float) -> None:
    """Save model + processor to ``args.out``, reload the folder and report the test splits through the processor."""
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    shipped_model, shipped_processor = load_shapes_llava(args.out)
    size = sum(path.stat().st_size for path in args.out.iterdir())
    print(f"saved {args.out} ({size} bytes)", flush=True)
    if args.test:
        print(f"test (saved folder reloaded): {evaluate(shipped_model, shipped_processor, *test_splits(args))}")
    print(f"total wall time {time.perf_counter() - started:.0f}s")


def stage3(model: LlavaForConditionalGeneration, make_batch: BatchMaker, caption_data: Examples, vqa_data: Examples,
           val: tuple[Examples, Examples], args: argparse.Namespace) -> Scores:
    """Stage 3: fine-tune on captions, easy-VQA's questions, balanced yes/no questions in easy-VQA's
    templates about the same training images, and (``--scene-question-fraction``) questions in those
    templates about the training scenes (``models/llava_yes_no.py``); no per-patch loss. Before it,
    ``--plain-steps`` of stage 3a: captions + balanced yes/no questions in the not negated templates
    only, whose answer is "the word names the object" itself (with balanced answers in all templates
    from the start, the answer is the XOR of that and the negation, and was never learned: see
    models/shapes_llava.md). ``--answer-head-weight``: the training-only ``AnswerHeads`` in both."""
    if args.yes_no_steps == 0:
        return evaluate(model, make_batch.processor, *val, make_batch=make_batch)
    vqa_objects = _objects(vqa_data)
    templates = question_templates(vqa_data.questions, vqa_data.answers,
                                   *zip(*(vqa_objects[row][0] for row in vqa_data.image_rows), strict=True))
    rng = np.random.default_rng(args.seed + 2)
    yes_no = _generated_examples(vqa_data, templates, vqa_objects, args.yes_no_per_image, 0.0, rng)
    held_out = _generated_examples(val[1], templates, _objects(val[1]), 2, 0.0, rng)
    # Always drawn (also when unused), so the draws after them do not depend on --scene-question-fraction.
    scenes = _generated_examples(caption_data, templates, _objects(caption_data), 1, args.find_share, rng)
    print(f"stage 3: templates {len(templates)} ({sum(t.kind == 'yes/no' for t in templates)} yes/no, "
          f"{sum(t.negated for t in templates)} negated); generated questions: {len(yes_no)} balanced yes/no "
          f"about easy-VQA train images, {len(scenes)} about train scenes, {len(held_out)} held-out",
          flush=True)
    counts = [round(args.batch_size * share) for share in
              (args.yes_no_caption_fraction, args.yes_no_fraction, args.scene_question_fraction)]
    sources = [(caption_data, counts[0]), (vqa_data, args.batch_size - sum(counts)), (yes_no, counts[1]),
               (scenes, counts[2])]
    answer_heads = None
    if args.answer_head_weight > 0:
        torch.manual_seed(args.seed + 4)
        answer_heads = AnswerHeads(model.config.text_config.hidden_size)
    plain = [template for template in templates if template.kind == "yes/no" and not template.negated]
    plain_yes_no = _generated_examples(vqa_data, plain, vqa_objects, args.yes_no_per_image, 0.0, rng)
    not_negated = [row for row, question in enumerate(held_out.questions)
                   if any(question == template.ask(template_of(question)[1] or "") for template in plain)]
    extra_val = [("held-out balanced yes/no", held_out), ("of them not negated", held_out.subset(not_negated))]
    if args.plain_steps > 0:
        n_captions = round(args.batch_size * args.plain_caption_fraction)
        print(f"stage 3a: {args.plain_steps} steps of {n_captions} captions + {args.batch_size - n_captions} "
              f"balanced yes/no questions in the {len(plain)} not negated templates", flush=True)
        train(model, None, make_batch, [(caption_data, n_captions), (plain_yes_no, args.batch_size - n_captions)],
              val, Schedule(args.plain_steps, args.plain_lr, args.vision_lr_scale, args.seed + 5, 0.0,
                            args.answer_head_weight, keep_best=False),
              args, extra_val=extra_val, answer_heads=answer_heads)
    schedule = Schedule(args.yes_no_steps, args.yes_no_lr, args.vision_lr_scale, args.seed + 3, 0.0,
                        args.answer_head_weight)
    best = train(model, None, make_batch, sources, val, schedule, args, extra_val=extra_val,
                 answer_heads=answer_heads)
    print(f"stage 3 best val: {best}", flush=True)
    return best


def _objects(examples: Examples, image_indices: Sequence[int] | None = None) -> list[list[tuple[str, str]]]:
    """``[(colour, shape), ...]`` of each image of ``examples`` (or of ``image_indices``), left to right
    (from the vision labels)."""
    assert examples.labels is not None
    colors = list(COLORS)
    slots = examples.labels.slots if image_indices is None else examples.labels.slots[np.asarray(image_indices)]
    return [[(colors[color], SHAPES[shape]) for color, shape in zip(*image_slots, strict=True) if color >= 0]
            for image_slots in slots]


def _generated_examples(examples: Examples, templates: Sequence[QuestionTemplate],
                        objects: Sequence[Sequence[tuple[str, str]]], per_image: int, find_share: float,
                        rng: np.random.Generator) -> Examples:
    """``generated_questions`` about every image of ``examples`` (same image arrays)."""
    rows, questions, answers = generated_questions(templates, objects, per_image, find_share, rng)
    return Examples(examples.images, examples.pixels, rows, questions, answers, examples.labels)


if __name__ == "__main__":
    main()
