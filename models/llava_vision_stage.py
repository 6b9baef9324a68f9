"""First stage of ``models/train_llava.py``: train shapes-llava's vision tower alone on dense labels.

A ViT trained from scratch through the language model alone learns colours fast and shapes hardly at
all (models/shapes_llava.md). This stage trains only the CLIP vision tower, with training-only linear
heads on its last layer (the layer LLaVA's projector reads), on three targets per image:

- per patch: colour (8 + background) and shape (3 + background) of the object covering most of the
  16x16 patch (at least a quarter of it);
- per patch: which of its 4x4 sub-blocks of 4x4 pixels an object covers (16 fractions in [0, 1]),
  a colour-free picture of the outline that a shape must be read from;
- per image: colour and shape of object 1, 2 and 3 from left to right (or none), read by three
  learned queries attending over the patch tokens, the order a caption names them in.

Images: the training scenes (labels from their masks) and easy-VQA's training images, whose one
object is segmented from the plain background: colour = nearest palette colour of the object's
median pixel, shape from how much of its bounding box it fills (circle pi/4, rectangle 1, triangle
1/2; on easy-VQA's 4,000 train images these thresholds agree with every shape that a question's
answer names, and the colour with 99.97% of the named colours).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mmcam.data.scenes import COLORS, SHAPES, Scene

SUB_BLOCKS = 4  # each patch's outline target: SUB_BLOCKS x SUB_BLOCKS coverage fractions
MAX_SLOTS = 3  # scenes hold at most three objects
# easy-VQA segmentation: a pixel belongs to the object when its summed |RGB - background| exceeds this.
_FOREGROUND_DISTANCE = 60
# Fill ratio (mask area / bounding-box area) between a triangle (1/2) and a circle (pi/4), and
# between a circle and a rectangle (1); easy-VQA's train images span 0.51-0.67, 0.73-0.90, 0.93-1.
_TRIANGLE_BELOW, _RECTANGLE_ABOVE = 0.69, 0.915


@dataclass(frozen=True)
class VisionLabels:
    """Dense targets for ``I`` images on a ``G x G`` patch grid.

    patches: (I, 2, G*G) int8, colour and shape index of each patch's object, -1 for background.
    outline: (I, G*G, SUB_BLOCKS**2) float16, object coverage of each patch's sub-blocks.
    slots: (I, 2, MAX_SLOTS) int8, colour and shape of the objects from left to right, -1 for none.
    """

    patches: np.ndarray
    outline: np.ndarray
    slots: np.ndarray


def object_labels(masks: Sequence[np.ndarray], colors: Sequence[str], shapes: Sequence[str],
                  patch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(patches (2, G*G), outline (G*G, SUB_BLOCKS**2), slots (2, MAX_SLOTS))`` for one image whose
    objects (left to right) have ``(S, S)`` bool ``masks``."""
    size = masks[0].shape[0]
    grid = size // patch_size
    if patch_size % SUB_BLOCKS or grid * patch_size != size:
        raise ValueError(f"patch size {patch_size} must divide the image side {size} and be a multiple of {SUB_BLOCKS}")
    patches = np.full((2, grid * grid), -1, dtype=np.int8)
    best = np.full(grid * grid, patch_size * patch_size // 4 - 1, dtype=np.int64)
    union = np.zeros((size, size), dtype=np.float32)
    slots = np.full((2, MAX_SLOTS), -1, dtype=np.int8)
    for index, (mask, color, shape) in enumerate(zip(masks, colors, shapes, strict=True)):
        covered = mask.reshape(grid, patch_size, grid, patch_size).sum(axis=(1, 3)).reshape(-1)
        wins = covered > best
        best[wins] = covered[wins]
        patches[0, wins], patches[1, wins] = list(COLORS).index(color), SHAPES.index(shape)
        slots[:, index] = list(COLORS).index(color), SHAPES.index(shape)
        union = np.maximum(union, mask)
    block = patch_size // SUB_BLOCKS
    outline = (union.reshape(grid, SUB_BLOCKS, block, grid, SUB_BLOCKS, block).mean(axis=(2, 5))
               .transpose(0, 2, 1, 3).reshape(grid * grid, SUB_BLOCKS * SUB_BLOCKS))
    return patches, outline.astype(np.float16), slots


def scene_labels(scenes: Sequence[Scene], patch_size: int) -> VisionLabels:
    """Targets of the scenes, from their object masks (objects already left to right)."""
    labels = [object_labels([o.mask for o in s.objects], [o.color for o in s.objects],
                            [o.shape for o in s.objects], patch_size) for s in scenes]
    return VisionLabels(*(np.stack(parts) for parts in zip(*labels, strict=True)))


def easy_vqa_object(image: np.ndarray) -> tuple[np.ndarray, str, str]:
    """``(mask (S, S) bool, colour, shape)`` of the one object in an easy-VQA ``(S, S, 3)`` uint8 image."""
    background = image[0, 0].astype(np.int64)
    mask = np.abs(image.astype(np.int64) - background).sum(axis=-1) > _FOREGROUND_DISTANCE
    if not mask.any():
        raise ValueError("easy-VQA image without an object: no pixel differs from the corner colour")
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    median = np.median(image[mask].astype(np.float64), axis=0)
    color = list(COLORS)[int(np.argmin(((palette - median) ** 2).sum(axis=1)))]
    rows, cols = np.nonzero(mask)
    fill = mask.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    shape = "triangle" if fill < _TRIANGLE_BELOW else "rectangle" if fill > _RECTANGLE_ABOVE else "circle"
    return mask, color, shape


def easy_vqa_labels(images: np.ndarray, patch_size: int) -> VisionLabels:
    """Targets of easy-VQA ``(I, s, s, 3)`` images, ``patch_size`` in their own pixels (the model's patch
    scaled by ``s`` / its input size)."""
    labels = []
    for image in images:
        mask, color, shape = easy_vqa_object(image)
        labels.append(object_labels([mask], [color], [shape], patch_size))
    return VisionLabels(*(np.stack(parts) for parts in zip(*labels, strict=True)))


class VisionHeads(nn.Module):
    """Training-only heads on the last vision layer's patch tokens ``(B, G*G, C)`` (discarded after training)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.patch_color = nn.Linear(width, len(COLORS) + 1)
        self.patch_shape = nn.Linear(width, len(SHAPES) + 1)
        self.outline = nn.Linear(width, SUB_BLOCKS * SUB_BLOCKS)
        self.slot_queries = nn.Parameter(torch.randn(MAX_SLOTS, width) * 0.02)
        self.slot_keys, self.slot_values = nn.Linear(width, width), nn.Linear(width, width)
        self.slot_color = nn.Linear(width, len(COLORS) + 1)
        self.slot_shape = nn.Linear(width, len(SHAPES) + 1)

    def slot_logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour ``(B, MAX_SLOTS, 9)`` and shape ``(B, MAX_SLOTS, 4)`` logits of the objects, left to right."""
        scores = torch.einsum("qc,bnc->bqn", self.slot_queries, self.slot_keys(tokens)) / tokens.shape[-1] ** 0.5
        pooled = torch.einsum("bqn,bnc->bqc", scores.softmax(dim=-1), self.slot_values(tokens))
        return self.slot_color(pooled), self.slot_shape(pooled)

    def patch_loss(self, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Colour + shape cross-entropy of ``tokens`` ``(B, G*G, C)`` against ``patches`` ``(B, 2, G*G)``."""
        targets = patches.long() + 1  # class 0 = background
        return (F.cross_entropy(self.patch_color(tokens).flatten(0, 1), targets[:, 0].flatten())
                + F.cross_entropy(self.patch_shape(tokens).flatten(0, 1), targets[:, 1].flatten()))

    def loss(self, tokens: torch.Tensor, labels: dict[str, torch.Tensor], outline_weight: float,
             slot_weight: float) -> torch.Tensor:
        """Patch + ``outline_weight`` x outline + ``slot_weight`` x slot loss over a batch."""
        color, shape = self.slot_logits(tokens)
        slots = labels["slots"].long() + 1  # class 0 = no object
        slot_loss = (F.cross_entropy(color.flatten(0, 1), slots[:, 0].flatten())
                     + F.cross_entropy(shape.flatten(0, 1), slots[:, 1].flatten()))
        outline_loss = F.binary_cross_entropy_with_logits(self.outline(tokens), labels["outline"].float())
        return self.patch_loss(tokens, labels["patches"]) + outline_weight * outline_loss + slot_weight * slot_loss


def patch_tokens(vision_tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B, G*G, C)``: the last vision layer's output without CLS (what LLaVA's projector reads)."""
    return vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]


@torch.no_grad()
def vision_scores(vision_tower: nn.Module, heads: VisionHeads, pixel_values: torch.Tensor,
                  labels: VisionLabels) -> dict[str, float]:
    """Held-out accuracies: patch colour and shape (object patches), slot shape (real objects), all slots right."""
    was_training = vision_tower.training
    vision_tower.eval()
    tokens = torch.cat([patch_tokens(vision_tower, chunk) for chunk in pixel_values.split(100)])
    vision_tower.train(was_training)
    patches, slots = torch.from_numpy(labels.patches).long(), torch.from_numpy(labels.slots).long()
    on_object = patches[:, 1] >= 0
    color = heads.patch_color(tokens).argmax(-1) - 1
    shape = heads.patch_shape(tokens).argmax(-1) - 1
    slot_color, slot_shape = (logits.argmax(-1) - 1 for logits in heads.slot_logits(tokens))
    return {
        "patch colour": float((color == patches[:, 0])[on_object].float().mean()),
        "patch shape": float((shape == patches[:, 1])[on_object].float().mean()),
        "slot shape": float((slot_shape == slots[:, 1])[slots[:, 1] >= 0].float().mean()),
        "slots exact": float(((slot_color == slots[:, 0]) & (slot_shape == slots[:, 1])).all(-1).float().mean()),
    }


def train_vision(vision_tower: nn.Module, heads: VisionHeads, batches: Callable[[int], tuple[torch.Tensor, dict]],
                 val: tuple[torch.Tensor, VisionLabels], *, steps: int, lr: float, warmup_steps: int,
                 outline_weight: float, slot_weight: float, eval_every: int,
                 learning_rate: Callable[[int, int, float, int], float]) -> dict[str, float]:
    """AdamW on the vision tower + heads for ``steps`` steps of ``batches(step)`` -> ``(pixels, labels)``.

    Returns the held-out scores after the last step (printed every ``eval_every`` steps too).
    """
    parameters = [*vision_tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    vision_tower.train()
    started, running = time.perf_counter(), 0.0
    scores: dict[str, float] = {}
    for step in range(steps):
        pixels, labels = batches(step)
        loss = heads.loss(patch_tokens(vision_tower, pixels), labels, outline_weight, slot_weight)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_norm=1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % 20 == 0:
            print(f"vision step {step + 1}/{steps}  loss {running / 20:.4f}  {time.perf_counter() - started:.0f}s",
                  flush=True)
            running = 0.0
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            scores = vision_scores(vision_tower, heads, *val)
            shown = ", ".join(f"{name} {100 * value:.1f}%" for name, value in scores.items())
            print(f"vision step {step + 1}  val {shown}  {time.perf_counter() - started:.0f}s", flush=True)
    return scores
