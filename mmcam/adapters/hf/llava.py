"""LLaVA (``LlavaForConditionalGeneration``): captions and answers from a decoder-only VLM.

The prompt comes from the checkpoint's own processor: its chat template renders a user turn with
the image and the instruction (or the question), and the processor expands the image token into
one placeholder per image feature. The language model reads ``prompt + text``; row
``len(prompt) - 1 + t`` of its logits scores text token t, as ``generate`` scores it.

Where the map is taken (``--layer``), three choices, each on the (h, w) patch grid:

- the vision tower block the language model reads, ``model.vision_tower.encoder.layers.K`` with
  K from ``vision_feature_layer`` (-2 in LLaVA-1.5: the last block gets no gradient), its patch
  tokens with the CLS token dropped; any other tower block works alike;
- the projector's output, ``model.multi_modal_projector``: the image tokens the language model
  reads (the CLS token dropped when the ``"full"`` strategy keeps it); the default, with
  Guided HiResCAM for captions and HiResCAM for answers, chosen by measurement on shapes-llava
  (``loading.LLAVA_CAPTION_METHOD``; docs/RESULTS.md, "shapes-llava pointing");
- language-model layer K's hidden states at the image-token positions,
  ``model.language_model.layers.K``: each row's image placeholders, found in the ids the
  language model reads, laid on the grid (see :class:`ImageTokenRows`). A text position's state
  there depends on the image too, but only the image positions have a place on the grid, so only
  they are mapped. The last layer (and the final norm) is refused: a causal model reads its
  states at the image positions only for those positions' own logits, which score nothing.

The patch grid is the processor's crop size over the patch size. Images are resized to the crop
size as a whole, not short-edge resized and centre-cropped as the processor does, so the grid
covers the whole original image and a map is stretched back onto it (a wide image's sides are
seen by the model, and explained, rather than cut off).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ...core import TokenGrid, resolve_layer
from ...core.hooks import eval_mode
from ...core.layout import Layout
from ...errors import InputError
from ...targets import CaptionScores
from ..captioning import CaptionTokens
from ..vqa import QuestionTokens
from .captioning import TransformersCaptioner
from .preprocess import ImageSettings
from .vqa import BlipAnswerScorer, Candidate, pad_ids
from .words import encode_words

DEFAULT_INSTRUCTION = "Describe the image."
TOWER = "model.vision_tower"
TOWER_LAYERS = f"{TOWER}.encoder.layers"
PROJECTOR = "model.multi_modal_projector"
LANGUAGE_MODEL = "model.language_model"


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


def image_rows(prompt: LlavaPrompt, model: nn.Module) -> ImageTokenRows:
    """The image placeholders of the language model's rows, on the patch grid; the ``"full"``
    strategy's CLS placeholder is dropped."""
    full = model.config.vision_feature_select_strategy == "full"
    extra = int(getattr(prompt.processor, "num_additional_image_tokens", 0) or 0) if full else 0
    return ImageTokenRows(prompt.image_token_id, prompt.grid(int(model.config.vision_config.patch_size)), drop=extra)


def layer_layout(prompt: LlavaPrompt, model: nn.Module, layer: str, rows: ImageTokenRows) -> TokenGrid | ImageTokenRows:
    """How ``layer``'s output lies on the patch grid: a vision tower block's (B, extra + h*w, C)
    patch tokens, the projector's (B, drop + h*w, C) image tokens, or, for a language-model
    decoder layer but the last (or a part of one), ``rows`` (the image placeholders of its
    (R, L, C) hidden states). Any other layer is an InputError naming the choices."""
    name, module = resolve_layer(model, layer)
    if _inside(model, TOWER, module):
        return patch_tokens(prompt, model)
    if _inside(model, PROJECTOR, module):
        return TokenGrid(drop=rows.drop, grid=rows.grid)
    language = model.get_submodule(LANGUAGE_MODEL)
    last = len(language.layers) - 1
    if module is language.layers[last] or (hasattr(language, "norm") and _inside(language, "norm", module)):
        raise InputError(
            f"layer {name!r}: the last language-model layer's states at the image tokens reach no scored "
            f"token (a causal model reads them only for their own positions' logits); choose "
            f"{LANGUAGE_MODEL}.layers.K with K < {last}"
        )
    if _inside(language, "layers", module):
        return rows
    raise InputError(
        f"layer {name!r} holds no image tokens on LLaVA's patch grid; choose a vision tower block "
        f"({TOWER_LAYERS}.K), the projector ({PROJECTOR}) or a language-model layer ({LANGUAGE_MODEL}.layers.K)"
    )


def _inside(model: nn.Module, name: str, module: nn.Module) -> bool:
    return any(module is part for part in model.get_submodule(name).modules())


@dataclass(frozen=True)
class ImageTokenRows:
    """Layout of a language-model layer's hidden states (R, L, C): each row's image
    placeholders (``image_token_id``), after ``drop`` leading ones, on the (h, w) ``grid``.

    Before each forward, the scorer records the ids the language model reads (the prompt's are
    enough: it holds every placeholder) and which image each row belongs to (a VQA scorer reads
    one row per candidate answer), kept per thread until the next forward. Image n's activations
    are those of its first row: its rows share the prompt up to the placeholders, and the model
    is causal, so their states there are equal. Image n's gradient for a target is the sum over
    its rows (the chain rule through those shared states; a target reads one row, so the other
    rows add zero)."""

    image_token_id: int
    grid: tuple[int, int]
    drop: int = 0
    _recorded: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    def __reduce__(self) -> tuple:
        # copies and pickles (deepcopy of an adapter, worker processes) start with no record
        return ImageTokenRows, (self.image_token_id, self.grid, self.drop)

    def record(self, ids: Tensor, owners: Sequence[int]) -> None:
        """Remember, for this thread's next reshape, the placeholder positions of each row of
        ``ids`` (R, L') and ``owners[r]``, the image of row r (every image 0..N-1 has a row)."""
        placeholders = ids == self.image_token_id
        expected = self.drop + self.grid[0] * self.grid[1]
        counts = set(placeholders.sum(dim=1).tolist())
        if counts != {expected}:
            raise ValueError(
                f"rows with {sorted(counts)} image placeholders; the {self.grid[0]}x{self.grid[1]} grid "
                f"after {self.drop} leading ones needs {expected}"
            )
        positions = placeholders.nonzero()[:, 1].reshape(ids.shape[0], expected)[:, self.drop :]
        owned = torch.as_tensor(list(owners), dtype=torch.long)
        if owned.shape != (ids.shape[0],) or set(owned.tolist()) != set(range(int(owned.max()) + 1)):
            raise ValueError(f"owners {owned.tolist()} must name an image 0..N-1 for each of the {ids.shape[0]} rows")
        self._recorded.rows = positions.cpu(), owned

    def _rows(self, count: int) -> tuple[Tensor, Tensor]:
        rows = getattr(self._recorded, "rows", None)
        if rows is None:
            raise RuntimeError("no forward pass recorded its image-token rows in this thread; the scorer must call record()")
        if rows[0].shape[0] != count:
            raise RuntimeError(f"the layer gave {count} rows, but the last forward recorded {rows[0].shape[0]}")
        return rows

    def __call__(self, activations: Tensor) -> Tensor:
        """Hidden states (R, L, C) -> (N, C, h, w): each image's first row at its placeholders."""
        positions, owners = self._rows(activations.shape[0])
        first = _first_rows(owners)
        tokens = activations[first[:, None].to(activations.device), positions[first].to(activations.device)]
        return Layout("tokens", self.grid)(tokens)

    def gradients(self, gradients: Tensor) -> Tensor:
        """Per-target gradients (T, R, L, C) -> (N, T, C, h, w): each row's at its
        placeholders, summed over each image's rows."""
        count, rows = gradients.shape[:2]
        positions, owners = self._rows(rows)
        device = gradients.device
        picked = gradients[:, torch.arange(rows, device=device)[:, None], positions.to(device)]  # (T, R, P, C)
        images = int(owners.max()) + 1
        summed = picked.new_zeros(count, images, *picked.shape[2:]).index_add_(1, owners.to(device), picked)
        grid = Layout("tokens", self.grid)(summed.transpose(0, 1).reshape(images * count, *picked.shape[2:]))
        return grid.reshape(images, count, *grid.shape[1:])

    def attention(self, attentions: Sequence[Tensor], steps: slice) -> Tensor:
        """The language model's attention from rows ``steps`` to the image placeholders, mean
        over layers and heads: per-layer weights (R, heads, L, L) -> (N, S, h, w), each image's
        first row."""
        positions, owners = self._rows(attentions[0].shape[0])
        first = _first_rows(owners)
        device = attentions[0].device  # layers dispatched over devices give weights on each
        mean = torch.stack([weights.to(device, torch.float32) for weights in attentions]).mean(dim=(0, 2))
        mean = mean[first.to(device), steps]  # (N, S, L)
        picked = mean.gather(2, positions[first].to(mean.device)[:, None, :].expand(-1, mean.shape[1], -1))
        return picked.reshape(*picked.shape[:2], *self.grid)

    def describe(self) -> str:
        """``"language-model tokens 8x8 at the image placeholders"``."""
        return f"language-model tokens {self.grid[0]}x{self.grid[1]} at the image placeholders"


def _first_rows(owners: Tensor) -> Tensor:
    """(N,): the index of each image's first row, for rows owned by images ``owners`` (R,)."""
    listed = owners.tolist()
    return torch.tensor([listed.index(n) for n in range(max(listed) + 1)])


@contextlib.contextmanager
def _eager_attention(model: nn.Module, enabled: bool) -> Iterator[None]:
    """The language model on eager attention during the block (sdpa returns no weights), then
    back on its own implementation."""
    language = model.get_submodule(LANGUAGE_MODEL)
    previous = language.config._attn_implementation
    if not enabled or previous == "eager":
        yield
        return
    language.set_attn_implementation("eager")
    try:
        yield
    finally:
        language.set_attn_implementation(previous)


@dataclass
class LlavaCaptioner(TransformersCaptioner):
    """A :class:`TransformersCaptioner` whose prefix is the prompt (instruction and image
    placeholders) and whose ``generate`` starts from it. ``placeholders`` records the image
    placeholders' rows on each forward (the layout of a language-model layer); with
    ``attention`` the scores also carry the language model's attention from each step to the
    image tokens, mean over layers and heads (eager attention: slower)."""

    placeholders: ImageTokenRows | None = None
    attention: bool = False

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced logits (N, L, V) of captions ``ids`` (N, L): row t scores ids[:, t];
        with ``attention``, (N, L, h, w) attention at those rows."""
        if self.attention and self.placeholders is None:
            raise ValueError("attention maps need the image placeholders' layout (placeholders=)")
        prompt = torch.tensor(self.prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
        if self.placeholders is not None:
            self.placeholders.record(prompt, range(ids.shape[0]))
        text = torch.cat([prompt, ids], dim=1)
        with _eager_attention(self.model, self.attention):
            output = self.model(pixel_values=images, input_ids=text, output_attentions=self.attention, **self.text_inputs(text))
        steps = slice(len(self.prefix) - 1, len(self.prefix) - 1 + ids.shape[1])
        attention = self.placeholders.attention(output.attentions, steps) if self.attention else None
        return CaptionScores(output.logits[:, steps], attention)

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
    placeholders: ImageTokenRows | None = None  # recorded on each forward: a language-model layer's layout

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
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=self.item_pixels(images, n),
                    **self.text_inputs(prompt, [prompt.shape[1]]), num_beams=beams, num_return_sequences=beams, do_sample=False, min_new_tokens=1,
                    max_new_tokens=self.max_new_tokens,
                )
                answers.append(self.distinct_answers(sequences[:, prompt.shape[1] :].tolist(), count))
        return answers

    def distinct_answers(self, sequences: list[list[int]], count: int) -> list[Candidate]:
        """The first ``count`` distinct answers (case-insensitive) among generated token
        sequences (the tokens after the prompt), each cut at the end token."""
        distinct: dict[str, Candidate] = {}
        for sequence in sequences:
            ids = sequence[: sequence.index(self.end_id)] if self.end_id in sequence else sequence
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip() or "<empty>"
            distinct.setdefault(text.lower(), (text, tuple(ids)))
        return list(distinct.values())[:count]

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """log p(answer a | image n, prompt n) for ``candidates[n][a]``, shape (N, A); columns
        past an item's own candidates hold -inf."""
        prompts = [prompt[0].tolist() for prompt in self._unpadded(question_ids)]
        ids, attention, scored, owners = self.answer_rows(prompts, candidates, images.device)
        features = self.image_features(images)
        image_rows = ids == self.prompt.image_token_id
        if self.placeholders is not None:
            self.placeholders.record(ids, owners)
        row_features = torch.stack([features[n] for n in owners]).to(self.model.dtype)
        embeds = self.model.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(image_rows[..., None], row_features)
        prompt_lengths = [len(prompts[n]) for n in owners]
        logits = self.model(inputs_embeds=embeds, attention_mask=attention, **self.text_inputs(ids, prompt_lengths)).logits
        return self.answer_table(logits, ids, scored, candidates)

    def answer_rows(
        self, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[Sequence[int]]], device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """One row ``prompt n + answer + end`` per (item n, candidate), right-padded: ids
        (R, L), attention mask (R, L), which positions are scored (the answer's and the end's)
        and each row's item."""
        if len(candidates) != len(prompts):
            raise ValueError(f"{len(candidates)} candidate lists given for a batch of {len(prompts)}")
        if not all(candidates):
            raise InputError("no candidate answers to score; give --answer or let the model generate one")
        rows, owners, answer_masks = [], [], []
        for n, (prompt, items) in enumerate(zip(prompts, candidates, strict=True)):
            for ids in items:
                rows.append([*prompt, *ids, self.end_id])
                owners.append(n)
                answer_masks.append([0] * len(prompt) + [1] * (len(ids) + 1))
        ids = pad_ids(rows, self.end_id).to(device)
        attention = pad_ids([[1] * len(row) for row in rows], 0).to(device)
        return ids, attention, pad_ids(answer_masks, 0).to(device), owners

    def answer_table(self, logits: Tensor, ids: Tensor, scored: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """(N, A): each row's summed log-probs of its scored tokens, item n's candidates in row
        n; columns past an item's own candidates hold -inf."""
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
        totals = (logprobs * scored[:, 1:]).sum(dim=1)
        width = max(len(items) for items in candidates)
        table = torch.full((len(candidates), width), -torch.inf, device=logits.device)
        column = 0
        for n, items in enumerate(candidates):
            table[n, : len(items)] = totals[column : column + len(items)]
            column += len(items)
        return table

    def item_pixels(self, images: Tensor, item: int) -> Tensor:
        """The model's ``pixel_values`` for item ``item`` of the images (a subclass whose images
        are cut into views inside the forward cuts them here)."""
        return images[item : item + 1]

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
