"""Train the shipped easy-VQA model: ``python -m models.train_vqa``.

Trains on easy-VQA's train split, then reports accuracy on all of its test split. Each step takes a
batch of images with all of their questions (about ten each), so every image goes through the CNN
once per epoch instead of once per question.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import easy_vqa
import torch
from torch import Tensor, nn

from mmcam.models.easy_vqa_data import EasyVQASplit, build_vocab, load_easy_vqa_split, load_split_questions
from mmcam.models.vqa import DEFAULT_WEIGHTS, EasyVQANet, save_easy_vqa


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS,
                        help="weights file (.safetensors); a .json with vocab and answers goes beside it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (another job shares this machine)")
    parser.add_argument("--images-per-batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    return parser.parse_args(argv)


def image_batches(split: EasyVQASplit, images_per_batch: int,
                  generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled batches: (image rows (B,), question indices (n,)) with every question of those images."""
    order = torch.argsort(split.question_image_index, stable=True)
    questions_per_image = torch.bincount(split.question_image_index, minlength=len(split.images))
    questions_of_image = torch.split(order, questions_per_image.tolist())
    image_order = torch.randperm(len(split.images), generator=generator)
    for start in range(0, len(image_order), images_per_batch):
        image_rows = image_order[start : start + images_per_batch]
        yield image_rows, torch.cat([questions_of_image[row] for row in image_rows.tolist()])


def train_epoch(model: EasyVQANet, split: EasyVQASplit, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LRScheduler, images_per_batch: int,
                generator: torch.Generator) -> tuple[float, float]:
    """One pass over the train images; returns (mean loss, accuracy) over its questions."""
    model.train()
    loss_sum, correct = 0.0, 0
    for image_rows, question_indices in image_batches(split, images_per_batch, generator):
        image_vectors = model.encode_image(split.images[image_rows])
        # Row of each question's image within this batch of images.
        batch_row_of_image = torch.empty(len(split.images), dtype=torch.long)
        batch_row_of_image[image_rows] = torch.arange(len(image_rows))
        question_image_vectors = image_vectors[batch_row_of_image[split.question_image_index[question_indices]]]
        question_vectors = model.encode_question_ids(split.question_ids[question_indices])
        answer_logits = model.answer_logits(question_image_vectors, question_vectors)
        targets = split.answer_indices[question_indices]
        loss = nn.functional.cross_entropy(answer_logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * len(question_indices)
        correct += int((answer_logits.argmax(dim=1) == targets).sum())
    return loss_sum / len(split), correct / len(split)


@torch.no_grad()
def predict_answers(model: EasyVQANet, split: EasyVQASplit, batch_size: int = 500) -> Tensor:
    """Predicted answer index of every question in ``split``: (N,)."""
    model.eval()
    predictions = []
    for start in range(0, len(split), batch_size):
        batch = slice(start, start + batch_size)
        predictions.append(model(split.question_images(batch), split.question_ids[batch]).argmax(dim=1))
    return torch.cat(predictions)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command_start_time = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    vocab = build_vocab(load_split_questions("train")[0])
    train_split = load_easy_vqa_split("train", vocab)
    test_split = load_easy_vqa_split("test", vocab)
    print(f"easy-VQA train: {len(train_split)} questions, {len(train_split.images)} images; "
          f"test: {len(test_split)} questions, {len(test_split.images)} images; vocab {len(vocab)} words")

    model = EasyVQANet(vocab, easy_vqa.get_answers())
    print(f"parameters: {sum(parameter.numel() for parameter in model.parameters())}")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    steps_per_epoch = -(-len(train_split.images) // args.images_per_batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.learning_rate,
                                                   total_steps=args.epochs * steps_per_epoch)

    start_time = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loss, accuracy = train_epoch(model, train_split, optimizer, schedule, args.images_per_batch, generator)
        print(f"epoch {epoch}: train loss {loss:.4f}, train accuracy {accuracy:.4f}, "
              f"{time.perf_counter() - start_time:.0f} s", flush=True)
    training_seconds = time.perf_counter() - start_time

    correct = int((predict_answers(model, test_split) == test_split.answer_indices).sum())
    print(f"test accuracy: {correct}/{len(test_split)} = {correct / len(test_split):.4f}")
    print(f"training wall time: {training_seconds:.1f} s ({args.threads} thread(s)); "
          f"whole command with data loading and test: {time.perf_counter() - command_start_time:.1f} s")
    save_easy_vqa(model, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size} bytes) and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
