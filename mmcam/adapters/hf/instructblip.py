"""InstructBLIP (``InstructBlipForConditionalGeneration``): captions and answers that follow an
instruction.

The vision tower (a ViT) encodes the image; the Q-Former reads its tokens through cross-attention
together with the instruction (its own BERT tokenizer: ``qformer_input_ids``) and gives
``num_query_tokens`` query tokens; these, projected, fill the image placeholders at the start
of the language model's prompt: ``<image> x num_query_tokens + instruction`` as the checkpoint's
processor writes it (the instruction as is: InstructBLIP's processor has no chat template). A
decoder-only language model (Vicuna, OPT) reads ``prompt + text``, row ``len(prompt) - 1 + t``
of its logits scoring text token t; an encoder-decoder one (Flan-T5) reads the prompt in its
encoder and ``decoder start + text`` in its decoder, row t scoring text token t.

The map is taken in the vision tower: by default its last block, on the patch tokens (the CLS
token dropped), a grid of the input size over the patch size. The Q-Former's query tokens, and
everything after them, have no place in the image, so no layer there can be mapped: such a
layer is refused. Images are resized whole to the model's fixed input size (no crop), so the
grid covers the whole original image and a map is stretched back onto it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor, nn

from ...core.hooks import eval_mode
from ...errors import InputError
from ...pipeline import model_device
from ..captioning import CaptionAdapter
from ..vqa import QuestionTokens
from .layout import PatchTokens
from .preprocess import ImageSettings
from .prompted import PromptedCaptioner
from .vqa import BlipAnswerScorer, Candidate, GenerativeVQAAdapter, pad_ids
from .words import encode_words

if TYPE_CHECKING:
    from .loading import Loaded

DEFAULT_INSTRUCTION = "A short image description:"  # InstructBLIP's captioning prompt
TOWER_LAYERS = "vision_model.encoder.layers"
_MAPPABLE = ("vision_model.embeddings", f"{TOWER_LAYERS}.")
_QUERY_PARTS = ("qformer", "query_tokens", "language_projection", "language_model")
_QFORMER_MARK = -2  # separates a question's language-model ids from its Q-Former ids


def default_layer(model: nn.Module) -> str:
    """The vision tower's last block: the tokens the Q-Former reads (after a layer norm)."""
    return f"{TOWER_LAYERS}.{len(model.get_submodule(TOWER_LAYERS)) - 1}"


@dataclass(frozen=True)
class InstructBlipPrompt:
    """The language model's and the Q-Former's token ids for an instruction, from the
    checkpoint's processor."""

    processor: Any
    image: ImageSettings
    name: str
    query_tokens: int

    def __post_init__(self) -> None:
        if getattr(self.processor, "qformer_tokenizer", None) is None:
            raise InputError(
                f"{self.name}'s processor has no Q-Former tokenizer (qformer_tokenizer/); save the InstructBlipProcessor"
            )
        if getattr(self.processor, "num_query_tokens", None) != self.query_tokens:
            raise InputError(
                f"{self.name}'s processor sets num_query_tokens={getattr(self.processor, 'num_query_tokens', None)}, "
                f"the model reads {self.query_tokens}; save the processor with num_query_tokens={self.query_tokens}"
            )

    def ids(self, instruction: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(language-model ids, Q-Former ids) of ``instruction``, exactly as the processor
        gives them with an image: the image placeholders, then the tokenized instruction."""
        height, width = self.image.size
        encoded = self.processor(images=Image.new("RGB", (width, height)), text=instruction)
        return tuple(encoded["input_ids"][0]), tuple(encoded["qformer_input_ids"][0])


def patch_layout(loaded: Loaded, layer: str) -> PatchTokens:
    """The reshape of ``layer``'s output onto the vision tower's patch grid (input size over
    patch size; the CLS token dropped), or an InputError for a layer with no such grid."""
    model = loaded.model
    if layer.split(".")[0] in _QUERY_PARTS:
        raise InputError(
            f"{layer} holds the Q-Former's {model.config.num_query_tokens} query tokens (or what is made of them), "
            f"which have no place in the image; choose a vision tower layer, e.g. {default_layer(model)}"
        )
    if not any(layer == name.rstrip(".") or layer.startswith(name) for name in _MAPPABLE):
        raise InputError(
            f"{layer} is no patch-token layer of the vision tower; choose {TOWER_LAYERS}.K, e.g. {default_layer(model)}"
        )
    vision = model.config.vision_config
    side = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    if loaded.image is None or loaded.image.size != (side, side):
        raise InputError(f"{loaded.name}'s image processor does not resize to the vision tower's {side}x{side} input")
    return PatchTokens(loaded.image.size)


def _prompt(loaded: Loaded) -> InstructBlipPrompt:
    from .loading import processor_of

    return InstructBlipPrompt(processor_of(loaded), loaded.image, loaded.name, loaded.model.config.num_query_tokens)


def _end_ids(loaded: Loaded) -> tuple[int, ...]:
    """The language model's end tokens (generation config first); an InputError for none."""
    from .loading import _end_ids as end_ids

    generation, text = loaded.model.generation_config, loaded.model.config.text_config
    ends = end_ids(generation.eos_token_id, text.eos_token_id)
    if not ends:
        raise InputError(f"{loaded.name}'s config sets no eos_token_id; set it in config.json / generation_config.json")
    return ends


def _decoder_start(loaded: Loaded) -> int | None:
    """The encoder-decoder language model's decoder start token; None for a decoder-only one."""
    from .loading import _first_id

    if loaded.model.config.use_decoder_only_language_model:
        return None
    generation, text = loaded.model.generation_config, loaded.model.config.text_config
    return _first_id("text_config.decoder_start_token_id", generation.decoder_start_token_id, text.decoder_start_token_id)


def captioner(loaded: Loaded, layer: str, instruction: str | None = None) -> CaptionAdapter:
    """InstructBLIP captions: the caption follows ``instruction`` (default
    :data:`DEFAULT_INSTRUCTION`), read by the Q-Former and the language model."""
    prompt = _prompt(loaded)
    prompt_ids, qformer_ids = prompt.ids(instruction or DEFAULT_INSTRUCTION)
    start = _decoder_start(loaded)
    scorer = PromptedCaptioner(
        loaded.name, loaded.model, loaded.tokenizer, loaded.image, layer, patch_layout(loaded, layer),
        prefix=prompt_ids if start is None else (start,), end_ids=_end_ids(loaded),
        text_argument="input_ids" if start is None else "decoder_input_ids",
        prompt_ids=prompt_ids, extra_ids={"qformer_input_ids": qformer_ids},
    )
    return CaptionAdapter(scorer)


@dataclass
class InstructBlipAnswerScorer(BlipAnswerScorer):
    """y^c = log p(answer c | image, question): the answer's token log-probs plus the end token's.

    The question is the instruction: the Q-Former and the language model both read it. A
    question's ids hold its language-model prompt, then a mark (-2), then its Q-Former ids; rows
    are right-padded with -1. The vision tower and the Q-Former run once per minibatch (the
    Q-Former's padding masked); the language model then reads one row per (item, candidate)
    with the item's query tokens in its placeholders: ``prompt + answer + end`` (decoder-only,
    right-padded: causal, so padding never reaches a real token's row), or the prompt in the
    encoder (padding masked) and ``start + answer + end`` in the decoder."""

    prompt: InstructBlipPrompt | None = field(default=None, repr=False)
    decoder_start: int | None = None
    end_ids: tuple[int, ...] = ()  # configured end tokens: a generated answer is cut at the first, as captions are

    @property
    def pad_id(self) -> int:
        return -1  # cut off before any model reads the ids

    def tokenize(self, question: str) -> QuestionTokens:
        _, pieces = encode_words(self.tokenizer, question, special_tokens=False)
        unknown = tuple(pieces.words[w] for w in pieces.unknown)
        prompt_ids, qformer_ids = self.prompt.ids(question)
        return QuestionTokens(pieces.words, (*prompt_ids, _QFORMER_MARK, *qformer_ids), unknown, spans=pieces.spans)

    def _prompts(self, question_ids: Tensor) -> list[tuple[list[int], list[int]]]:
        """Per item: (language-model prompt ids, Q-Former ids)."""
        split = []
        for row in question_ids.tolist():
            row = [token for token in row if token != self.pad_id]
            mark = row.index(_QFORMER_MARK)
            split.append((row[:mark], row[mark + 1 :]))
        return split

    def generate_answers(self, images: Tensor, question_ids: Tensor, count: int) -> list[list[Candidate]]:
        beams = 1 if count == 1 else 2 * count  # spare beams: two token sequences may read the same
        device = images.device
        answers = []
        with torch.no_grad(), eval_mode(self.model):
            for n, (prompt, qformer) in enumerate(self._prompts(question_ids)):
                prompt_ids = torch.tensor([prompt], device=device)
                sequences = self.model.generate(
                    pixel_values=images[n : n + 1], qformer_input_ids=torch.tensor([qformer], device=device),
                    input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), num_beams=beams,
                    num_return_sequences=beams, do_sample=False, min_new_tokens=1, max_new_tokens=self.max_new_tokens,
                )
                # from the prompt's last token, or the decoder start: _answer_of reads what follows it
                start = len(prompt) - 1 if self.decoder_start is None else 0
                distinct: dict[str, Candidate] = {}
                for sequence in sequences[:, start:].tolist():
                    ends = [i for i, token in enumerate(sequence) if i and token in self.end_ids]
                    text, ids = self._answer_of(sequence[: ends[0]] if ends else sequence)
                    distinct.setdefault(text.lower(), (text, ids))
                answers.append(list(distinct.values())[:count])
        return answers

    def score(self, images: Tensor, question_ids: Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """log p(answer a | image n, question n) for ``candidates[n][a]``, shape (N, A); columns
        past an item's own candidates hold -inf."""
        if len(candidates) != question_ids.shape[0]:
            raise ValueError(f"{len(candidates)} candidate lists given for a batch of {question_ids.shape[0]}")
        if not all(candidates):
            raise InputError("no candidate answers to score; give --answer or let the model generate one")
        device = images.device
        prompts = self._prompts(question_ids)
        qformer_pad = int(self.prompt.processor.qformer_tokenizer.pad_token_id or 0)
        qformer = pad_ids([ids for _, ids in prompts], qformer_pad).to(device)
        qformer_mask = pad_ids([[1] * len(ids) for _, ids in prompts], 0).to(device)
        queries = self.model.get_image_features(
            pixel_values=images, qformer_input_ids=qformer, qformer_attention_mask=qformer_mask
        ).pooler_output
        owners = [n for n, items in enumerate(candidates) for _ in items]
        start = () if self.decoder_start is None else (self.decoder_start,)  # read, not scored
        answers = [(*start, *ids, self.end_id) for items in candidates for ids in items]
        prompt_rows = [prompts[n][0] for n in owners]
        if self.decoder_start is None:  # the answer continues the prompt
            prompt_rows = [[*prompt, *answer] for prompt, answer in zip(prompt_rows, answers, strict=True)]
        decoder_rows = None if self.decoder_start is None else answers
        logits = self._language_logits(prompt_rows, decoder_rows, torch.stack([queries[n] for n in owners]))
        scored_rows = prompt_rows if decoder_rows is None else decoder_rows
        ids = pad_ids(scored_rows, self.end_id).to(logits.device)
        answer_mask = pad_ids(
            [[0] * (len(row) - len(answer)) + [1] * len(answer) for row, answer in zip(scored_rows, answers, strict=True)], 0
        )
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
        totals = (logprobs * answer_mask[:, 1:].to(logits.device)).sum(dim=1)
        table = torch.full((len(candidates), max(len(items) for items in candidates)), -torch.inf, device=totals.device)
        column = 0
        for n, items in enumerate(candidates):
            table[n, : len(items)] = totals[column : column + len(items)]
            column += len(items)
        return table

    def _language_logits(
        self, prompt_rows: list[list[int]], decoder_rows: list[list[int]] | None, queries: Tensor
    ) -> Tensor:
        """The language model's logits (R, L, V) for rows of prompt ids (and answers, or
        ``decoder_rows`` for an encoder-decoder) whose image placeholders hold ``queries``
        (R, Q, D); right-padded, the padding masked."""
        embedding = self.model.get_input_embeddings()
        device = model_device(embedding)  # the language model may sit on another device than the queries
        ids = pad_ids(prompt_rows, self.end_id).to(device)
        embeds = embedding(ids)
        placeholders = ids == self.model.config.image_token_id
        embeds = embeds.masked_scatter(placeholders[..., None], queries.to(device, embeds.dtype))
        inputs = {"inputs_embeds": embeds, "attention_mask": pad_ids([[1] * len(row) for row in prompt_rows], 0).to(device)}
        if decoder_rows is not None:
            inputs["decoder_input_ids"] = pad_ids(decoder_rows, self.end_id).to(device)
            inputs["decoder_attention_mask"] = pad_ids([[1] * len(row) for row in decoder_rows], 0).to(device)
        return self.model.language_model(**inputs).logits


def answers(loaded: Loaded, layer: str) -> GenerativeVQAAdapter:
    """InstructBLIP VQA: the question is the instruction; y^c = log p(answer + end | prompt)."""
    scorer = InstructBlipAnswerScorer(
        loaded.model, loaded.tokenizer, loaded.image, None, name=loaded.name, layer=layer, embedding_layer=None,
        reshape=patch_layout(loaded, layer), prompt=_prompt(loaded), decoder_start=_decoder_start(loaded),
        end_id=_end_ids(loaded)[0], end_ids=_end_ids(loaded),
    )
    return GenerativeVQAAdapter(scorer)
