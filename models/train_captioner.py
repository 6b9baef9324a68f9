"""Train the shipped scenes captioner: ``python -m models.train_captioner``.

Trains on the generated "train" split, keeps the checkpoint with the best greedy exact-match rate on
"val", saves it, reloads the saved file and reports exact match and BLEU-4 on "test". Seeded: the
same command on the same machine and thread count gives the same weights.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from torch import Tensor

from mmcam.data.scenes import Scene, iter_split
from mmcam.models.captioner import DEFAULT_WEIGHTS, ShapesCaptioner, load_shapes_captioner, save_shapes_captioner


@dataclass(frozen=True)
class CaptionDataset:
    """Scenes as arrays: ``images`` ``(N, S, S, 3)`` uint8 and ``words`` per scene."""

    images: np.ndarray
    words: list[tuple[str, ...]]

    @classmethod
    def generate(cls, split: str, n: int, size: int = 128) -> CaptionDataset:
        """Render ``n`` scenes of ``split`` straight into one array (masks are not kept)."""
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        words: list[tuple[str, ...]] = []
        for index, scene in enumerate(iter_split(split, n)):
            images[index] = scene.image
            words.append(scene.words)
        return cls(images, words)

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> CaptionDataset:
        return cls(np.stack([scene.image for scene in scenes]), [scene.words for scene in scenes])

    def __len__(self) -> int:
        return len(self.words)

    def image_batch(self, rows: np.ndarray | range) -> Tensor:
        """``(B, 3, S, S)`` float RGB in [0, 1]."""
        return torch.from_numpy(self.images[rows]).permute(0, 3, 1, 2).float().div_(255.0)


def teacher_forcing_batch(model: ShapesCaptioner, captions: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
    """Decoder inputs ``<start> w1 .. wn`` and targets ``w1 .. wn <end>``, both ``(B, L)``, padded."""
    length = 1 + max(len(words) for words in captions)
    inputs = torch.full((len(captions), length), model.pad_id, dtype=torch.long)
    targets = torch.full((len(captions), length), model.pad_id, dtype=torch.long)
    for row, words in enumerate(captions):
        ids = model.encode_words(words)
        inputs[row, : len(ids) + 1] = torch.tensor([model.start_id, *ids])
        targets[row, : len(ids) + 1] = torch.tensor([*ids, model.end_id])
    return inputs, targets


@dataclass(frozen=True)
class CaptionScores:
    exact_match: float  # fraction of greedy captions equal to the reference word for word
    bleu4: float  # corpus BLEU-4 with nltk's smoothing method 1
    n: int

    def __str__(self) -> str:
        return f"exact match {100 * self.exact_match:.2f}%, BLEU-4 {self.bleu4:.4f} (n={self.n})"


def evaluate(model: ShapesCaptioner, data: CaptionDataset, batch_size: int = 100) -> CaptionScores:
    """Greedy-caption every scene and compare with its reference caption."""
    was_training = model.training
    model.eval()
    hypotheses: list[list[str]] = []
    for start in range(0, len(data), batch_size):
        rows = range(start, min(start + batch_size, len(data)))
        hypotheses += [model.decode_ids(ids) for ids, _ in model.generate(data.image_batch(rows))]
    model.train(was_training)
    references = [list(words) for words in data.words]
    exact = sum(hyp == ref for hyp, ref in zip(hypotheses, references, strict=True)) / len(data)
    bleu = corpus_bleu([[ref] for ref in references], hypotheses, smoothing_function=SmoothingFunction().method1)
    return CaptionScores(exact_match=exact, bleu4=float(bleu), n=len(data))


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: ShapesCaptioner,
    train_data: CaptionDataset,
    val_data: CaptionDataset,
    *,
    steps: int,
    batch_size: int,
    peak_lr: float,
    warmup_steps: int,
    eval_every: int,
    seed: int,
) -> CaptionScores:
    """Train in place with AdamW and cross-entropy on next tokens; leave the best-on-val weights."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.0)
    loss_function = torch.nn.CrossEntropyLoss(ignore_index=model.pad_id)
    order_rng = np.random.default_rng(seed)
    order = order_rng.permutation(len(train_data))
    cursor = 0
    best_scores, best_state = CaptionScores(-1.0, 0.0, len(val_data)), copy.deepcopy(model.state_dict())
    started, running_loss = time.perf_counter(), 0.0
    model.train()
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = order_rng.permutation(len(train_data)), 0
        rows = np.sort(order[cursor : cursor + batch_size])
        cursor += batch_size
        inputs, targets = teacher_forcing_batch(model, [train_data.words[row] for row in rows])
        logits, _ = model(train_data.image_batch(rows), inputs)
        loss = loss_function(logits.flatten(0, 1), targets.flatten())
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr, warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
        optimizer.step()
        running_loss += loss.item()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            scores = evaluate(model, val_data)
            if scores.exact_match >= best_scores.exact_match:
                best_scores, best_state = scores, copy.deepcopy(model.state_dict())
            elapsed = time.perf_counter() - started
            mean_loss = running_loss / ((step % eval_every) + 1)
            print(f"step {step + 1}/{steps}  loss {mean_loss:.4f}  val {scores}  {elapsed:.0f}s", flush=True)
            running_loss = 0.0
    model.load_state_dict(best_state)
    model.eval()
    return best_scores


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="safetensors path (a .json is written beside it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-val", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=1000)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_data = CaptionDataset.generate("train", args.n_train)
    val_data = CaptionDataset.generate("val", args.n_val)
    test_data = CaptionDataset.generate("test", args.n_test)
    print(f"generated {args.n_train}/{args.n_val}/{args.n_test} scenes in {time.perf_counter() - started:.1f}s")

    model = ShapesCaptioner()
    print(f"{sum(p.numel() for p in model.parameters())} parameters")
    train_started = time.perf_counter()
    best_val = train(
        model,
        train_data,
        val_data,
        steps=args.steps,
        batch_size=args.batch_size,
        peak_lr=args.lr,
        warmup_steps=args.warmup_steps,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    train_seconds = time.perf_counter() - train_started
    save_shapes_captioner(model, args.out)
    shipped = load_shapes_captioner(args.out)
    print(f"best val: {best_val}")
    print(f"test (saved weights reloaded): {evaluate(shipped, test_data)}")
    print(f"training {train_seconds:.0f}s, total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
