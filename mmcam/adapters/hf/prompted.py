"""Captioners whose model reads a fixed prompt besides the caption (InstructBLIP, Florence-2).

The prompt (image placeholders and an instruction or task prompt) and any further fixed ids
(InstructBLIP's Q-Former instruction) are the same for every image, so they are built once from
the checkpoint's processor and expanded to the minibatch inside the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...core.hooks import eval_mode
from ...targets import CaptionScores
from ..captioning import CaptionTokens
from .captioning import TransformersCaptioner


@dataclass
class PromptedCaptioner(TransformersCaptioner):
    """A :class:`TransformersCaptioner` whose model also reads ``prompt_ids`` (the language
    model's prompt) and ``extra_ids`` (argument name -> ids, e.g. ``qformer_input_ids``).

    A decoder-only language model (``text_argument="input_ids"``) reads ``prompt + caption``:
    the prefix is the prompt. An encoder-decoder one (``"decoder_input_ids"``) reads the prompt
    in its encoder (``input_ids``) and ``prefix + caption`` in its decoder, the prefix being its
    decoder start token (and a forced first token, where ``generate`` forces one). Either way
    logits row ``len(prefix) - 1 + t`` scores caption token t, and ``generate``'s output begins
    with the prefix.
    """

    prompt_ids: tuple[int, ...] = ()
    extra_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def prompt_inputs(self, count: int, device: torch.device) -> dict[str, Tensor]:
        """The fixed inputs for ``count`` images: ``extra_ids``, and an encoder-decoder's
        prompt as ``input_ids`` (a decoder-only model's prompt is the prefix of its text)."""
        fixed = dict(self.extra_ids)
        if self.text_argument != "input_ids":
            fixed["input_ids"] = self.prompt_ids
        return {name: torch.tensor([ids], device=device).expand(count, -1) for name, ids in fixed.items()}

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L): row t scores ids[:, t]."""
        prefix = torch.tensor(self.prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
        text = torch.cat([prefix, ids], dim=1)
        inputs = self.prompt_inputs(ids.shape[0], ids.device)
        logits = self.model(pixel_values=images, **inputs, **{self.text_argument: text}).logits
        first = len(self.prefix) - 1
        return CaptionScores(logits[:, first : first + ids.shape[1]])

    def generate(self, images: Tensor, beam_size: int) -> CaptionTokens:
        return self.generate_batch(images, beam_size)[0]

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of images (N, C, h, w): one ``generate`` call from the shared prompt."""
        inputs = self.prompt_inputs(images.shape[0], images.device)
        inputs["input_ids"] = torch.tensor([self.prompt_ids], device=images.device).expand(images.shape[0], -1)
        with torch.no_grad(), eval_mode(self.model):
            sequences = self.model.generate(
                pixel_values=images, **inputs, attention_mask=torch.ones_like(inputs["input_ids"]),
                num_beams=beam_size, do_sample=False, max_new_tokens=self.max_new_tokens,
            )
        return [self.caption_of(sequence.tolist()) for sequence in sequences]
