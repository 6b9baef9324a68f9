"""LLaVA (``LlavaForConditionalGeneration``): captions and answers from a decoder-only VLM.

The prompt comes from the checkpoint's own processor: its chat template renders a user turn with
the image and the instruction (or the question), and the processor expands the image token into
one placeholder per image feature. The language model reads ``prompt + text``; row
``len(prompt) - 1 + t`` of its logits scores text token t, as ``generate`` scores it.

The map is taken in the vision tower's layer the language model reads
(``vision_feature_layer``, -2 by default: the last layer gets no gradient), on its patch tokens
(the CLS token dropped). The patch grid is the processor's crop size over the patch size.
Images are resized to the crop size as a whole, not short-edge resized and centre-cropped as
the processor does, so the grid covers the whole original image and a map is stretched back
onto it (a wide image's sides are seen by the model, and explained, rather than cut off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ...core import TokenGrid
from ...core.hooks import eval_mode
from ...errors import InputError
from ..captioning import CaptionTokens
from ..vqa import QuestionTokens
from .captioning import TransformersCaptioner
from .preprocess import ImageSettings
from .vqa import BlipAnswerScorer, Candidate, pad_ids
from .words import encode_words

DEFAULT_INSTRUCTION = "Describe the image."
TOWER_LAYERS = "model.vision_tower.encoder.layers"


@dataclass(frozen=True)
class LlavaPrompt:
    """Prompt token ids from the checkpoint's processor, and the image-token layout it implies."""

    processor: Any
    image: ImageSettings
    name: str

    def __post_init__(self) -> None:
        tokenizer = self.processor.tokenizer
        if not getattr(self.processor, "chat_template", None):
            raise InputError(
                f"{self.name}'s processor has no chat template (chat_template.jinja); save the processor with one"
            )
        if getattr(tokenizer, "image_token", None) is None or getattr(tokenizer, "image_token_id", None) is None:
            raise InputError(f"{self.name}'s tokenizer has no image token (extra_special_tokens image_token)")

    @property
    def image_token_id(self) -> int:
        return int(self.processor.tokenizer.image_token_id)

    def ids(self, text: str) -> tuple[int, ...]:
        """Token ids of a user turn with the image and ``text``, then the assistant's turn
        opening: exactly what the processor gives the model, image placeholders expanded."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        rendered = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        bos = getattr(self.processor.tokenizer, "bos_token", None)
        height, width = self.image.size
        blank = Image.new("RGB", (width, height))
        encoded = self.processor(
            images=blank, text=rendered, add_special_tokens=not (bos and rendered.startswith(bos)), return_tensors="pt"
        )
        return tuple(encoded["input_ids"][0].tolist())

    def grid(self, patch_size: int) -> tuple[int, int]:
        """(h, w) of the vision tower's patch tokens: the crop size over the patch size."""
        height, width = self.image.size
        if height % patch_size or width % patch_size:
            raise InputError(f"{self.name}: an input of {height}x{width} is no whole number of {patch_size}-pixel patches")
        return height // patch_size, width // patch_size


def tower_layer(model: nn.Module) -> str:
    """The dotted name of the vision tower block whose output the language model reads."""
    config = model.config
    chosen = config.vision_feature_layer
    if not isinstance(chosen, int):
        raise InputError(f"vision_feature_layer {chosen} reads several layers; pass --layer {TOWER_LAYERS}.K")
    count = len(model.get_submodule(TOWER_LAYERS))
    index = count + chosen if chosen < 0 else chosen - 1  # hidden_states[k] is block k-1's output
    if not 0 <= index < count:
        raise InputError(f"vision_feature_layer {chosen} names no block of the vision tower; pass --layer")
    return f"{TOWER_LAYERS}.{index}"


def patch_tokens(prompt: LlavaPrompt, model: nn.Module) -> TokenGrid:
    """The vision tower's (B, extra + h*w, C) tokens on the (h, w) patch grid; ``extra`` is the
    processor's ``num_additional_image_tokens`` (CLIP's CLS)."""
    extra = int(getattr(prompt.processor, "num_additional_image_tokens", 0) or 0)
    return TokenGrid(drop=extra, grid=prompt.grid(int(model.config.vision_config.patch_size)))


@dataclass
class LlavaCaptioner(TransformersCaptioner):
    """A :class:`TransformersCaptioner` whose prefix is the prompt (instruction and image
    placeholders) and whose ``generate`` starts from it."""

    def generate(self, images: Tensor, beam_size: int) -> CaptionTokens:
        return self.generate_batch(images, beam_size)[0]

    def text_inputs(self, ids: Tensor) -> dict[str, Tensor]:
        """The model's inputs besides ids, images and attention mask for ids (N, L) that begin
        with the prompt: none for LLaVA (a subclass adds e.g. ``token_type_ids``)."""
        return {}

    def generate_batch(self, images: Tensor, beam_size: int) -> list[CaptionTokens]:
        """Captions of images (N, C, h, w): one ``generate`` call from the shared prompt."""
        prompt = torch.tensor(self.prefix, device=images.device).expand(images.shape[0], -1)
        with torch.no_grad(), eval_mode(self.model):
            sequences = self.model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=images,
                num_beams=beam_size, do_sample=False, max_new_tokens=self.max_new_tokens, **self.text_inputs(prompt),
            )
        return [self.caption_of(sequence.tolist()) for sequence in sequences]


@dataclass
class LlavaAnswerScorer(BlipAnswerScorer):
    """y^c = log p(answer c | image, prompt): the answer's token log-probs plus the end token's.

    The question ids are the whole prompt (its words and spans are the question's own). The
    vision tower and projector run once per minibatch; the language model then reads one row per
    (item, candidate) with the item's image features in its placeholders (right-padded: causal,
    so padding never reaches a real token's row)."""

    prompt: LlavaPrompt | None = field(default=None, repr=False)

    @property
    def pad_id(self) -> int:
        return -1  # collated prompts are cut back to their length before the model reads them

    def tokenize(self, question: str) -> QuestionTokens:
        _, pieces = encode_words(self.tokenizer, question, special_tokens=False)
        unknown = tuple(pieces.words[w] for w in pieces.unknown)
        return QuestionTokens(pieces.words, self.prompt.ids(question), unknown, spans=pieces.spans)

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[Candidate]]:
        beams = 1 if count == 1 else 2 * count
        answers = []
        with torch.no_grad(), eval_mode(self.model):
            for n, prompt in enumerate(self._unpadded(question_ids)):
                sequences = self.model.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=images[n : n + 1],
                    **self.text_inputs(prompt, [prompt.shape[1]]), num_beams=beams, num_return_sequences=beams, do_sample=False, min_new_tokens=1,
                    max_new_tokens=self.max_new_tokens,
                )
                distinct: dict[str, Candidate] = {}
                for sequence in sequences[:, prompt.shape[1] :].tolist():
                    ids = sequence[: sequence.index(self.end_id)] if self.end_id in sequence else sequence
                    text = self.tokenizer.decode(ids, skip_special_tokens=True).strip() or "<empty>"
                    distinct.setdefault(text.lower(), (text, tuple(ids)))
                answers.append(list(distinct.values())[:count])
        return answers

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """log p(answer a | image n, prompt n) for ``candidates[n][a]``, shape (N, A); columns
        past an item's own candidates hold -inf."""
        if len(candidates) != question_ids.shape[0]:
            raise ValueError(f"{len(candidates)} candidate lists given for a batch of {question_ids.shape[0]}")
        if not all(candidates):
            raise InputError("no candidate answers to score; give --answer or let the model generate one")
        features = self.image_features(images)
        prompts = [prompt[0].tolist() for prompt in self._unpadded(question_ids)]
        rows, owners, answer_masks = [], [], []
        for n, (prompt, items) in enumerate(zip(prompts, candidates, strict=True)):
            for ids in items:
                rows.append([*prompt, *ids, self.end_id])
                owners.append(n)
                answer_masks.append([0] * len(prompt) + [1] * (len(ids) + 1))
        device = images.device
        ids = pad_ids(rows, self.end_id).to(device)
        attention = pad_ids([[1] * len(row) for row in rows], 0).to(device)
        scored = pad_ids(answer_masks, 0).to(device)
        image_rows = ids == self.prompt.image_token_id
        row_features = torch.stack([features[n] for n in owners]).to(self.model.dtype)
        embeds = self.model.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(image_rows[..., None], row_features)
        prompt_lengths = [len(prompts[n]) for n in owners]
        logits = self.model(inputs_embeds=embeds, attention_mask=attention, **self.text_inputs(ids, prompt_lengths)).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
        totals = (logprobs * scored[:, 1:]).sum(dim=1)
        width = max(len(items) for items in candidates)
        table = torch.full((len(candidates), width), -torch.inf, device=device)
        column = 0
        for n, items in enumerate(candidates):
            table[n, : len(items)] = totals[column : column + len(items)]
            column += len(items)
        return table

    def image_features(self, images: Tensor) -> Tensor:
        """(N, image tokens, C): the projected image features the language model reads."""
        config = self.model.config
        return self.model.model.get_image_features(
            pixel_values=images,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output

    def text_inputs(self, ids: Tensor, prompt_lengths: Sequence[int]) -> dict[str, Tensor]:
        """The model's inputs besides embeddings and attention mask for rows ids (R, L), row r
        beginning with a prompt of ``prompt_lengths[r]`` tokens: none for LLaVA."""
        return {}
