"""Train the shipped decoder-only VLM ``shapes-llava``: ``python -m models.train_llava``.

Builds everything offline: a byte-level BPE tokenizer learned from the scenes' captions, easy-VQA's
train questions and answers and the chat prompt words (``<image>`` an added special token), a
``LlavaProcessor`` with a chat template, and a ``LlavaForConditionalGeneration`` (small CLIP ViT,
standard projector, small Llama) from configs. Trains on mixed batches of scene captions and
easy-VQA questions, the loss on the answer tokens only, plus a training-only per-patch colour/shape
loss on the scenes' vision tokens (from the scene masks; its heads are not saved), keeps the checkpoint with the best
validation score, saves model + processor with ``save_pretrained``, reloads the folder and reports
caption exact match on the scenes test split and easy-VQA test accuracy. Seeded: the same command on
the same machine and thread count gives the same weights.

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

from mmcam.data.scenes import COLORS, SHAPES, Scene, iter_split
from mmcam.models.easy_vqa_data import load_split_questions
from mmcam.models.shapes_llava import (
    CAPTION_INSTRUCTION,
    DEFAULT_FOLDER,
    answer_text,
    caption_prompt,
    generate_answers,
    load_shapes_llava,
    vqa_prompt,
)
from models.train_captioner import learning_rate

IMAGE_SIZE, PATCH_SIZE = 128, 16  # 8x8 patch tokens reach the language model
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

    images: (I, S, S, 3) uint8; image_rows: (N,) row of each example's image; questions: None asks
    for a caption.
    """

    images: np.ndarray
    image_rows: np.ndarray
    questions: list[str | None]
    answers: list[str]
    patch_labels: np.ndarray | None = None  # (I, 2, G*G): colour and shape index of each patch, -1 background

    def __len__(self) -> int:
        return len(self.answers)

    def prompts(self, processor: LlavaProcessor, rows: Sequence[int]) -> list[str]:
        return [caption_prompt(processor) if self.questions[row] is None else vqa_prompt(processor, self.questions[row])
                for row in rows]

    def image_list(self, rows: Sequence[int]) -> list[np.ndarray]:
        return [self.images[self.image_rows[row]] for row in rows]

    def patch_label_batch(self, rows: Sequence[int]) -> torch.Tensor:
        """``(B, 2, G*G)`` long: colour and shape labels of each row's patches (raster order)."""
        assert self.patch_labels is not None
        return torch.from_numpy(self.patch_labels[self.image_rows[list(rows)]]).long()


def scene_examples(split: str, n: int) -> Examples:
    """The first ``n`` scenes of ``split`` as caption examples, with the patch labels of each scene."""
    images = np.empty((n, 128, 128, 3), dtype=np.uint8)
    labels = np.empty((n, 2, (IMAGE_SIZE // PATCH_SIZE) ** 2), dtype=np.int8)
    captions: list[str] = []
    for index, scene in enumerate(iter_split(split, n)):
        images[index] = scene.image
        labels[index] = _patch_labels(scene)
        captions.append(scene.caption)
    return Examples(images, np.arange(n), [None] * n, captions, labels)


def _patch_labels(scene: Scene) -> np.ndarray:
    """``(2, G*G)``: colour and shape index of the object covering most of each 16x16 patch, if it
    covers at least a quarter of it; -1 (background) otherwise."""
    grid = IMAGE_SIZE // PATCH_SIZE
    labels = np.full((2, grid * grid), -1, dtype=np.int8)
    best = np.full(grid * grid, PATCH_SIZE * PATCH_SIZE // 4 - 1, dtype=np.int64)
    colors, shapes = list(COLORS), list(SHAPES)
    for obj in scene.objects:
        covered = obj.mask.reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).sum(axis=(1, 3)).reshape(-1)
        wins = covered > best
        best[wins] = covered[wins]
        labels[0, wins], labels[1, wins] = colors.index(obj.color), shapes.index(obj.shape)
    return labels


def easy_vqa_examples(split: str, image_ids: set[int] | None = None) -> Examples:
    """easy-VQA ``split`` questions (only those about ``image_ids`` when given), in the split's order."""
    questions, answers, question_image_ids = load_split_questions(split)
    keep = [row for row, image_id in enumerate(question_image_ids) if image_ids is None or image_id in image_ids]
    paths = (easy_vqa.get_train_image_paths if split == "train" else easy_vqa.get_test_image_paths)()
    distinct = sorted({question_image_ids[row] for row in keep})
    row_of_image = {image_id: row for row, image_id in enumerate(distinct)}
    images = np.stack([_load_rgb(paths[image_id]) for image_id in distinct])
    return Examples(images, np.array([row_of_image[question_image_ids[row]] for row in keep]),
                    [questions[row] for row in keep], [answers[row] for row in keep])


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


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """CLIP image processor (128x128, pixels to [-1, 1]) + the tokenizer + the chat template."""
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": IMAGE_SIZE}, do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE)


def build_model(tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> LlavaForConditionalGeneration:
    """Randomly initialised LLaVA: CLIP ViT (patch 16, CLS + 8x8 patches) -> 2-layer MLP -> Llama."""
    vision = CLIPVisionConfig(hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
                              num_hidden_layers=args.vision_layers, num_attention_heads=4, image_size=IMAGE_SIZE,
                              patch_size=PATCH_SIZE, projection_dim=args.vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.text_hidden, intermediate_size=args.text_intermediate,
                       num_hidden_layers=args.text_layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                         image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, vision_feature_layer=-1,
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
    grid, channels = IMAGE_SIZE // PATCH_SIZE, table.shape[1]
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

    Labels are -100 on the prompt (image tokens included) and padding, so the loss covers the answer
    and the end token only.
    """

    def __init__(self, processor: LlavaProcessor) -> None:
        self.processor = processor
        self._prompt_lengths: dict[str, int] = {}
        self._blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` after the processor expands ``<image>``."""
        if prompt not in self._prompt_lengths:
            ids = self.processor(images=[self._blank], text=[prompt])["input_ids"][0]
            self._prompt_lengths[prompt] = len(ids)
        return self._prompt_lengths[prompt]

    def __call__(self, examples: Examples, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        prompts = examples.prompts(self.processor, rows)
        eos = self.processor.tokenizer.eos_token
        texts = [prompt + answer_text(examples.answers[row], eos) for prompt, row in zip(prompts, rows, strict=True)]
        inputs = self.processor(images=examples.image_list(rows), text=texts, padding=True, return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        for index, prompt in enumerate(prompts):
            labels[index, : self.prompt_length(prompt)] = -100
        inputs["labels"] = labels
        return dict(inputs)


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
    """Fraction of greedy answers (captions) equal to the reference string."""
    rows = range(len(examples))
    predicted = generate_answers(model, processor, examples.image_list(rows), examples.prompts(processor, rows))
    return sum(p == examples.answers[row] for p, row in zip(predicted, rows, strict=True)) / max(1, len(examples))


def evaluate(model: LlavaForConditionalGeneration, processor: LlavaProcessor, captions: Examples,
             questions: Examples) -> Scores:
    was_training = model.training
    model.eval()
    scores = Scores(accuracy(model, processor, captions), accuracy(model, processor, questions),
                    len(captions), len(questions))
    model.train(was_training)
    return scores


def train(model: LlavaForConditionalGeneration, processor: LlavaProcessor, caption_data: Examples,
          vqa_data: Examples, val: tuple[Examples, Examples], args: argparse.Namespace) -> Scores:
    """AdamW on answer-token cross-entropy over mixed batches; leaves the best-on-val weights in ``model``."""
    make_batch = BatchMaker(processor)
    patch_heads = PatchHeads(model.config.vision_config.hidden_size)
    optimizer = torch.optim.AdamW([*model.parameters(), *patch_heads.parameters()], lr=args.lr,
                                  weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    n_captions = round(args.batch_size * args.caption_fraction)
    orders = {"caption": (caption_data, rng.permutation(len(caption_data)), 0),
              "vqa": (vqa_data, rng.permutation(len(vqa_data)), 0)}
    best, best_state = Scores(-1.0, -1.0, 0, 0), copy.deepcopy(model.state_dict())
    started, running_loss = time.perf_counter(), 0.0
    model.train()
    for step in range(args.steps):
        batches, caption_rows = [], []
        for name, count in (("caption", n_captions), ("vqa", args.batch_size - n_captions)):
            data, order, cursor = orders[name]
            if cursor + count > len(order):
                order, cursor = rng.permutation(len(data)), 0
            orders[name] = (data, order, cursor + count)
            rows = order[cursor : cursor + count].tolist()
            batches.append(make_batch(data, rows))
            caption_rows = caption_rows or rows
        with _captured_patch_tokens(model) as patch_tokens:
            caption_loss = _answer_loss(model, batches[0])
        patch_loss = patch_heads.loss(patch_tokens[0], caption_data.patch_label_batch(caption_rows))
        loss = (caption_loss + _answer_loss(model, batches[1])) / sum(
            int((batch["labels"] != -100).sum()) for batch in batches) + args.patch_loss_weight * patch_loss
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        running_loss += loss.item()
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1}/{args.steps}  loss {running_loss / args.log_every:.4f}  "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
            running_loss = 0.0
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            scores = evaluate(model, processor, *val)
            if scores.combined >= best.combined:
                best, best_state = scores, copy.deepcopy(model.state_dict())
            print(f"step {step + 1}  val {scores}  {time.perf_counter() - started:.0f}s", flush=True)
    model.load_state_dict(best_state)
    model.eval()
    return best


class PatchHeads(torch.nn.Module):
    """Training-only linear heads that read each scene patch token's colour and shape (dense supervision
    from the scene masks; discarded after training, the shipped model is plain LLaVA)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.color = torch.nn.Linear(width, len(COLORS) + 1)
        self.shape = torch.nn.Linear(width, len(SHAPES) + 1)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over ``tokens`` ``(B, 1 + G*G, C)`` (CLS skipped) and ``labels`` ``(B, 2, G*G)``."""
        patches = tokens[:, 1:]
        targets = labels + 1  # class 0 = background
        return (torch.nn.functional.cross_entropy(self.color(patches).flatten(0, 1), targets[:, 0].flatten())
                + torch.nn.functional.cross_entropy(self.shape(patches).flatten(0, 1), targets[:, 1].flatten()))


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


def _answer_loss(model: LlavaForConditionalGeneration, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled (answer) positions of ``batch``."""
    labels = batch["labels"]
    logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum")


# ----------------------------------------------------------------------------------------- main
def test_splits(args: argparse.Namespace) -> tuple[Examples, Examples]:
    captions = scene_examples("test", args.n_test)
    questions = easy_vqa_examples("test")
    if args.n_vqa_test is not None and args.n_vqa_test < len(questions):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(questions), args.n_vqa_test, replace=False))
        questions = Examples(questions.images, questions.image_rows[keep],
                             [questions.questions[row] for row in keep], [questions.answers[row] for row in keep])
    return captions, questions


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_FOLDER, help="folder for save_pretrained")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="FOLDER",
                        help="only evaluate the checkpoint in FOLDER on the test splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1600, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (captions + questions)")
    parser.add_argument("--caption-fraction", type=float, default=0.5, help="share of captions in each batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=200)
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
                        help="weight of the training-only per-patch colour/shape loss on the scenes")
    parser.add_argument("--position-init", choices=("learned", "sincos"), default="sincos",
                        help="start of the ViT position embeddings: transformers' random init or 2-D sine-cosine")
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

    train_ids = set(range(4000 - VQA_VAL_IMAGES))
    caption_data, vqa_data = scene_examples("train", args.n_train), easy_vqa_examples("train", train_ids)
    vqa_val = easy_vqa_examples("train", set(range(4000 - VQA_VAL_IMAGES, 4000)))
    keep = np.sort(np.random.default_rng(args.seed).permutation(len(vqa_val))[: args.n_vqa_val])
    vqa_val = Examples(vqa_val.images, vqa_val.image_rows[keep], [vqa_val.questions[r] for r in keep],
                       [vqa_val.answers[r] for r in keep])
    val = (scene_examples("val", args.n_val), vqa_val)
    print(f"data: {len(caption_data)} train scenes, {len(vqa_data)} train questions; val {len(val[0])} scenes, "
          f"{len(val[1])} questions; {time.perf_counter() - started:.1f}s", flush=True)

    processor = build_processor(build_tokenizer())
    model = build_model(processor.tokenizer, args)
    print(f"vocabulary {len(processor.tokenizer)} tokens; {sum(p.numel() for p in model.parameters())} parameters; "
          f"caption prompt {caption_prompt(processor)!r}", flush=True)
    train_started = time.perf_counter()
    best_val = train(model, processor, caption_data, vqa_data, val, args)
    train_seconds = time.perf_counter() - train_started
    print(f"best val: {best_val}", flush=True)

    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    shipped_model, shipped_processor = load_shapes_llava(args.out)
    size = sum(path.stat().st_size for path in args.out.iterdir())
    print(f"saved {args.out} ({size} bytes)")
    print(f"test (saved folder reloaded): {evaluate(shipped_model, shipped_processor, *test_splits(args))}")
    print(f"training {train_seconds:.0f}s, total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
