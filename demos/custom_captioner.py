"""Explain your own captioner with mmcam: wrap it in a CaptionScorer.

    python demos/custom_captioner.py [OUT_DIR]

The toy captioner here (a small CNN and a GRU decoder, random weights) stands in for yours. A
scorer says four things about the model: how an image becomes its input tensor, how a caption
becomes token ids, how it generates, and the teacher-forced logits. mmcam then explains every
word from one forward pass.

The contract of ``score(images, ids)`` for captions ``ids`` (N, L): logits (N, L, V), one row per
caption token and no more, where row t scores token t given the image and the tokens before it,
the prediction ``generate`` makes at that step. A decoder that reads ``<bos> + ids`` returns
L + 1 rows: keep rows 0..L-1 (row L predicts what follows the caption); keeping rows 1..L would
shift every score by one word. mmcam refuses other shapes, and on a caption ``generate`` made
greedily it checks that each row's most likely token is the token generated there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

import mmcam
from mmcam.adapters.captioning import CaptionAdapter, CaptionTokens
from mmcam.errors import InputError
from mmcam.io import to_tensor
from mmcam.targets import CaptionScores
from mmcam.text import tokenize

VOCAB = ["<bos>", "<eos>", "a", "cat", "on", "the", "mat", "dog"]


class ToyCaptioner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.embed = nn.Embedding(len(VOCAB), 32)
        self.decoder = nn.GRU(32, 32, batch_first=True)
        self.head = nn.Linear(32, len(VOCAB))

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """images (N, 3, 64, 64), tokens (N, L) starting with <bos> -> logits (N, L, V)."""
        context = self.backbone(images).mean(dim=(-2, -1))  # (N, 32)
        hidden, _ = self.decoder(self.embed(tokens), context[None])
        return self.head(hidden)


@dataclass
class ToyScorer:
    """The CaptionScorer for ToyCaptioner."""

    model: ToyCaptioner
    name: str = "toy-captioner"
    layer: str = "backbone"  # the vision encoder's last conv stage
    reshape: object | None = None

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        return to_tensor(pixels, (64, 64))

    def tokenize(self, caption: str) -> CaptionTokens:
        words = tokenize(caption)
        unknown = [word for word in words if word not in VOCAB[2:]]
        if unknown:
            raise InputError(f"unknown words: {', '.join(unknown)}")
        return CaptionTokens.one_token_per_word(words, [VOCAB.index(word) for word in words])

    @torch.no_grad()
    def generate(self, images: Tensor, beam_size: int) -> CaptionTokens:
        ids: list[int] = []
        for _ in range(6):
            tokens = torch.tensor([[0, *ids]])
            next_id = int(self.model(images, tokens)[0, -1, 1:].argmax()) + 1  # never <bos>
            if next_id == 1:
                break
            ids.append(next_id)
        return CaptionTokens.one_token_per_word([VOCAB[i] for i in ids], ids)

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Logits (N, L, V): the decoder reads <bos> + ids (L + 1 rows); row t, read after <bos>
        and ids[:, :t], scores ids[:, t]. The last row predicts past the caption: dropped."""
        bos = torch.zeros((ids.shape[0], 1), dtype=torch.long)
        logits = self.model(images, torch.cat([bos, ids], dim=1))
        return CaptionScores(logits[:, : ids.shape[1]])


def main(out: str = "custom-captioner-out") -> None:
    torch.manual_seed(0)
    adapter = CaptionAdapter(ToyScorer(ToyCaptioner().eval()), default_method="hirescam")
    image = mmcam.demo.sample_path("chelsea.jpg")
    explanation = adapter.explain(image, "a cat on the mat")
    for word, logprob, (x, y) in zip(explanation.labels, explanation.info["logprobs"], map(explanation.peak_xy, range(len(explanation)))):
        print(f"{word:>4}: log p = {logprob:6.3f}, map peak at ({x}, {y})")
    explanation.save(out, "chelsea")
    print(f"wrote {out}/chelsea.html")


if __name__ == "__main__":
    main(*sys.argv[1:])
