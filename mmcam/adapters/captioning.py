"""Captioners: one heatmap per caption word, y_t = log p(w_t | w_<t, image).

Any captioner can be explained by wrapping it in a :class:`CaptionScorer`: a few methods that
say how to preprocess an image, how words become token ids, how to generate, and how to score a
caption by teacher forcing. :class:`CaptionAdapter` does the rest with the shared core: all
words of a caption from ONE forward pass and one batched backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from ..core import GradCAM, GradientRecord
from ..core.gradcam import Target
from ..core.hooks import model_lock
from ..errors import InputError
from ..explanation import Explanation
from ..io import ImageLike, LoadedImage, load_image
from ..pipeline import (
    DEFAULT_COUNTERFACTUAL, DEFAULT_GUIDED, ItemLabels, ModelPass, explanations, model_device, one_pass_pixels,
    per_size, run_pass,
)
from ..targets import CaptionScores, ItemWordContrastTarget, ItemWordTarget, SummedTarget
from ._scorer_adapter import ScorerAdapter, checked_options

SCORES = ("logprob", "logit")


@dataclass(frozen=True)
class CaptionTokens:
    """A caption as the model sees it: token ids (L,), and per word its text and the token
    positions it spans (one position per word for word-level vocabularies)."""

    ids: tuple[int, ...]
    words: tuple[str, ...]
    spans: tuple[tuple[int, ...], ...]

    @classmethod
    def one_token_per_word(cls, words: Sequence[str], ids: Sequence[int]) -> CaptionTokens:
        return cls(tuple(ids), tuple(words), tuple((position,) for position in range(len(ids))))


@runtime_checkable
class CaptionScorer(Protocol):
    """What mmcam needs from a captioner (implement it to explain your own model).

    ``model`` is the module that holds ``layer`` (the vision encoder's last convolutional layer,
    a dotted name); ``reshape`` is ``None`` for (N, C, h, w) layers or a
    :class:`~mmcam.TokenGrid` for token layouts. An optional ``pad_id`` (default 0) right-pads
    the shorter captions of a minibatch; ``score`` must give a real token's row the same value
    whatever follows it (true of causal decoders).
    """

    name: str
    model: nn.Module
    layer: str
    reshape: object | None

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """RGB uint8 (H, W, 3) -> the model's image tensor (C, h, w)."""

    def tokenize(self, caption: str) -> CaptionTokens:
        """Words and token ids of a caption; :class:`~mmcam.errors.InputError` for words the
        model cannot read."""

    def generate(self, images: Tensor, beam_size: int) -> CaptionTokens:
        """The model's caption of one image (1, C, h, w). An optional ``generate_batch(images,
        beam_size)`` captions N images (N, C, h, w) at once for :meth:`CaptionAdapter.run_batch`."""

    def score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        """Teacher-forced scores of captions ``ids`` (N, L): logits (N, L, V), exactly one row
        per caption token, where row t scores token t given the image and tokens < t (the
        prediction made after reading the start token and ``ids[:, :t]``, as ``generate`` makes
        it); attention, if any, (N, L, h, w). Offsets and special tokens are handled here, not
        by mmcam: a model that reads ``<start> + ids`` returns L + 1 rows, of which rows 0..L-1
        are kept (row L predicts what follows the caption). mmcam checks the shapes, and for a
        caption the scorer generated greedily that each row's most likely token is the token
        generated there (a scorer shifted by one row fails that)."""


@dataclass
class CaptionAdapter(ScorerAdapter):
    """Explains a :class:`CaptionScorer` word by word."""

    scorer: CaptionScorer
    kind: str = "caption"

    @property
    def layer_name(self) -> str:
        return self._model_pass().engine(self.default_method).layer_name

    def _model_pass(self) -> ModelPass:
        return ModelPass(self.scorer.model, self.scorer.layer, forward=self._score, reshape=self.scorer.reshape)

    def _score(self, images: Tensor, ids: Tensor) -> CaptionScores:
        return check_caption_scores(self.scorer.score(images, ids), ids)

    def caption_tokens(self, image: ImageLike, caption: str | None = None, beam_size: int = 1) -> CaptionTokens:
        """The caption to explain: tokenized from ``caption``, or generated (greedy, or beam
        search with ``beam_size`` > 1)."""
        if caption is None:
            loaded = load_image(image)
            images = self.scorer.preprocess(loaded.pixels)[None].to(model_device(self.scorer.model))
            with model_lock(self.scorer.model):  # threads sharing the model take turns
                return self.scorer.generate(images, beam_size)
        if not caption.strip():
            raise InputError("the caption is empty; give some words, or leave it out to generate one")
        return self.scorer.tokenize(caption)

    def _batch_tokens(
        self, loaded: Sequence[LoadedImage], pixels: Tensor, captions: Sequence[str | None], beam_size: int
    ) -> list[CaptionTokens]:
        """Each image's caption: tokenized, or generated where None (in one batch when the
        scorer has ``generate_batch(images, beam_size)``, else one image at a time)."""
        missing = [n for n, caption in enumerate(captions) if caption is None]
        generated: dict[int, CaptionTokens] = {}
        generate_batch = getattr(self.scorer, "generate_batch", None)
        if len(missing) > 1 and generate_batch is not None:
            with model_lock(self.scorer.model):  # threads sharing the model take turns
                captions_made = generate_batch(pixels[missing].to(model_device(self.scorer.model)), beam_size)
            generated = dict(zip(missing, captions_made, strict=True))
        return [
            generated[n] if n in generated else self.caption_tokens(image, caption, beam_size)
            for n, (image, caption) in enumerate(zip(loaded, captions, strict=True))
        ]

    def run(self, image: ImageLike, caption: str | None = None, **options: Any) -> CaptionRun:
        """The forward and backward pass behind :meth:`explain`, for callers that want several
        methods' maps from the same gradients (evaluation): :meth:`run_batch` of one image.
        ``options``: the fields of :class:`CaptionOptions`."""
        run = self.run_batch([image], [caption], **options)
        return CaptionRun(
            run.cam, run.record, run.tokens[0], run.images[0], run.chosen[0], run.labels[0], run.word_counts[0], run.method
        )

    def run_batch(
        self, images: Sequence[ImageLike], captions: Sequence[str | None] | None = None, **options: Any
    ) -> CaptionBatchRun:
        """ONE forward and ONE batched backward pass over N images, each with its own caption
        (given, or generated where ``captions[n]`` is None), right-padded with the scorer's
        ``pad_id`` (0 when it has none) to the longest caption (N, L). ``options``: the fields
        of :class:`CaptionOptions`. The images must preprocess to one size (:meth:`explain_batch`
        groups images of a VLM that sizes each image by its own aspect ratio).

        Target column j is, per image, its j-th target (its words, then the whole caption if
        asked, then the contrasts) or nothing (score 0) where it has fewer: every target reads
        only its own image's row, and a causal decoder's rows for real tokens never see the
        padding after them, so each image's maps and scores equal its own pass's."""
        settings = CaptionOptions.of(options)
        loaded, pixels, given = self._inputs(images, captions)
        return self._run(loaded, one_pass_pixels(pixels), given, settings)

    def _inputs(
        self, images: Sequence[ImageLike], captions: Sequence[str | None] | None
    ) -> tuple[list[LoadedImage], list[Tensor], list[str | None]]:
        """The images loaded and preprocessed, and one caption (or None) per image."""
        given = [None] * len(images) if captions is None else list(captions)
        if len(given) != len(images):
            raise InputError(f"{len(images)} images but {len(given)} captions")
        if not images:
            raise InputError("no images to explain")
        loaded = [load_image(image) for image in images]
        return loaded, [self.scorer.preprocess(item.pixels) for item in loaded], given

    def _run(
        self, loaded: Sequence[LoadedImage], pixels: Tensor, given: Sequence[str | None], settings: CaptionOptions
    ) -> CaptionBatchRun:
        """:meth:`run_batch` of images already loaded and preprocessed to one size (N, C, h, w)."""
        method = settings.method or self.default_method
        tokens = self._batch_tokens(loaded, pixels, given, settings.beam_size)
        if any(not item.words for item in tokens):
            raise InputError("the caption has no words to explain")
        chosen = [_select_words(item, settings.words) for item in tokens]
        plans = [
            _item_plan(item, positions, settings.whole_caption, settings.contrast)
            for item, positions in zip(tokens, chosen, strict=True)
        ]
        targets = _column_targets([plan for plan, _ in plans], settings.score)
        pad = getattr(self.scorer, "pad_id", None) or 0
        ids = torch.full((len(tokens), max(len(item.ids) for item in tokens)), pad, dtype=torch.long)
        for n, item in enumerate(tokens):
            ids[n, : len(item.ids)] = torch.tensor(item.ids, dtype=torch.long)
        device = model_device(self.scorer.model)
        explained = max(count for _, count in plans)  # the contrasts after them get no Guided Backprop
        cam, record = run_pass(
            self._model_pass(), (pixels.to(device), ids.to(device)), targets, method=method,
            guided=settings.guided, explained=explained,
        )
        for n, (item, caption) in enumerate(zip(tokens, given, strict=True)):
            if caption is None and settings.beam_size == 1:
                check_greedy_rows(record.output, item.ids, item=n)
        labels = [
            [item.words[w] for w in positions] + (["<caption>"] if settings.whole_caption else [])
            for item, positions in zip(tokens, chosen, strict=True)
        ]
        return CaptionBatchRun(cam, record, tokens, list(loaded), chosen, labels, [count for _, count in plans], method)

    def explain(
        self, image: ImageLike, caption: str | None = None, *, counterfactual: bool = DEFAULT_COUNTERFACTUAL, **options: Any
    ) -> Explanation:
        """Heatmaps for every word of ``caption`` (generated when None) from one forward pass.

        ``options`` are the fields of :class:`CaptionOptions`: ``words`` picks a subset
        (positions or words); ``score`` is ``"logprob"`` (default) or ``"logit"``;
        ``whole_caption`` adds a map for the sum of the words' log-probs. The explanation also
        holds Guided Grad-CAM, counterfactual maps, contrastive maps against each step's
        runner-up word (:attr:`~mmcam.explanation.Explanation.contrasts`) and the model's
        attention, when it has one. The one-image case of :meth:`explain_batch`.
        """
        (explanation,) = self.explain_batch([image], [caption], counterfactual=counterfactual, **options)
        return explanation

    def explain_batch(
        self,
        images: Sequence[ImageLike],
        captions: Sequence[str | None] | None = None,
        *,
        counterfactual: bool = DEFAULT_COUNTERFACTUAL,
        **options: Any,
    ) -> list[Explanation]:
        """:meth:`explain` for N images, each with its own caption (None or a None entry:
        generated), from ONE forward and ONE batched backward pass per image size (one pass for
        a fixed-size model; a VLM that sizes images by their aspect ratio gets one pass per
        size); each explanation equals the image's own :meth:`explain` up to float rounding."""
        settings = CaptionOptions.of(options)
        loaded, pixels, given = self._inputs(images, captions)

        def explain_group(group: list[int], stacked: Tensor) -> list[Explanation]:
            run = self._run([loaded[n] for n in group], stacked, [given[n] for n in group], settings)
            return self._explanations(run, settings, counterfactual)

        return per_size(pixels, explain_group)

    def _explanations(self, run: CaptionBatchRun, settings: CaptionOptions, counterfactual: bool) -> list[Explanation]:
        output = run.record.output
        items = []
        for n, (tokens, chosen, count) in enumerate(zip(run.tokens, run.chosen, run.word_counts, strict=True)):
            spans = [tokens.spans[w] for w in chosen] + ([tuple(range(len(tokens.ids)))] if settings.whole_caption else [])
            logprobs = [float(output.logprobs[n, list(span), [tokens.ids[p] for p in span]].sum()) for span in spans]
            caption_text = " ".join(tokens.words)
            info = {"caption": caption_text, "logprobs": logprobs, "score": settings.score, "title": caption_text}
            contrast_labels = []
            if settings.contrast:
                contrast_labels = [f"{position:02d}-{tokens.words[position]}-vs-runner-up" for position in chosen]
                info["contrast_scores"] = run.record.scores[n, count : count + len(chosen)].numpy()
            indices = [*chosen, *([-1] if settings.whole_caption else [])]
            attention = attention_maps(output, spans, item=n)
            items.append(ItemLabels(run.images[n], run.labels[n], indices, info, contrast_labels, attention))
        return explanations(
            self.kind, self.name, run.cam, run.record, items, method=run.method,
            explained=run.word_counts, counterfactual=counterfactual,
        )


@dataclass(frozen=True)
class CaptionOptions:
    """How a caption is explained: the keyword options of :meth:`CaptionAdapter.explain`,
    ``explain_batch``, ``run`` and ``run_batch``.

    ``words``: the words to explain (positions or words; default all); ``method``: a map method
    (default: the adapter's); ``beam_size``: beam search width when the caption is generated;
    ``score``: y^c of a word, ``"logprob"`` (default) or ``"logit"``; ``whole_caption``: also a
    map for the sum of the words' log-probs; ``guided``: Guided Backprop (for Guided Grad-CAM
    and ``guided_`` methods) on first use (``"lazy"``, default: one more forward pass when a map
    needs it), in the same pass (True) or not at all (False); ``contrast``: also each word against the runner-up word at its first token."""

    words: Sequence[int | str] | None = None
    method: str | None = None
    beam_size: int = 1
    score: str = "logprob"
    whole_caption: bool = False
    guided: bool | str = DEFAULT_GUIDED
    contrast: bool = True

    @classmethod
    def of(cls, options: dict[str, Any]) -> CaptionOptions:
        """Options from keywords, checked: an unknown keyword, score or method fails before any work."""
        settings = checked_options(cls, options, "caption")
        if settings.score not in SCORES:
            raise InputError(f"unknown score {settings.score!r}; choose one of: {', '.join(SCORES)}")
        return settings


@dataclass(frozen=True)
class CaptionBatchRun:
    """One forward and backward pass over N captioned images: the engine, its record (column
    j: image n's j-th target, words then the whole caption then the contrasts, or 0), and per
    image its caption's tokens, the image, the chosen word positions, the labels, and how many
    of its targets are explained (words and the whole caption); the method asked for."""

    cam: GradCAM
    record: GradientRecord
    tokens: list[CaptionTokens]
    images: list[LoadedImage]
    chosen: list[list[int]]
    labels: list[list[str]]
    word_counts: list[int]
    method: str


@dataclass(frozen=True)
class CaptionRun:
    """One forward and backward pass over a caption: the engine, its record (targets: the
    chosen words, then the whole caption if asked, then the contrasts), the caption's tokens,
    the image, the chosen word positions, the labels, how many targets are words, and the
    method asked for (``guided_`` variants included)."""

    cam: GradCAM
    record: GradientRecord
    tokens: CaptionTokens
    image: LoadedImage
    chosen: list[int]
    labels: list[str]
    word_count: int
    method: str


def check_caption_scores(scores: object, ids: Tensor) -> CaptionScores:
    """``scores`` if it has the shapes :meth:`CaptionScorer.score` promises for captions ``ids``
    (N, L): logits (N, L, V) with V above every token id, attention None or (N, L, h, w); a
    ValueError saying what was expected otherwise."""
    count, length = ids.shape
    if not isinstance(scores, CaptionScores):
        raise ValueError(f"CaptionScorer.score returned {type(scores).__name__}, expected CaptionScores(logits, attention)")
    logits = scores.logits
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (count, length):
        raise ValueError(
            f"CaptionScorer.score returned logits of shape {tuple(logits.shape)}, expected (N, L, V) with "
            f"N = {count} captions and L = number of caption tokens = {length} (row t scores token t)"
        )
    if length and int(ids.max()) >= logits.shape[2]:
        raise ValueError(
            f"CaptionScorer.score returned logits over {logits.shape[2]} tokens, but the caption holds "
            f"token id {int(ids.max())}: V must be the model's vocabulary size"
        )
    attention = scores.attention
    if attention is not None and (attention.dim() != 4 or tuple(attention.shape[:2]) != (count, length)):
        raise ValueError(
            f"CaptionScorer.score returned attention of shape {tuple(attention.shape)}, expected (N, L, h, w) "
            f"with N = {count} captions and L = number of caption tokens = {length}"
        )
    return scores


def check_greedy_rows(scores: CaptionScores, ids: Sequence[int], item: int = 0) -> None:
    """For a caption the scorer generated greedily (image ``item``'s, L tokens): row t's most likely
    token should be token t. A scorer whose rows are shifted by one step reproduces the
    neighbouring tokens instead; raise when a shift agrees with the generated tokens more often
    than the rows as given (logit processors in ``generate`` may move a few argmaxes, not most)."""
    if len(ids) < 2:
        return
    best = scores.logits[item, : len(ids)].detach().argmax(dim=-1).tolist()
    same = sum(b == t for b, t in zip(best, ids, strict=True))
    early = sum(b == t for b, t in zip(best, ids[1:], strict=False))  # row t predicts token t + 1
    late = sum(b == t for b, t in zip(best[1:], ids, strict=False))  # row t predicts token t - 1
    if same < len(ids) and max(early, late) > same:
        which = "t + 1" if early >= late else "t - 1"
        raise ValueError(
            f"CaptionScorer.score looks shifted by one row: for the caption it generated greedily, row t's "
            f"most likely token is token {which} at {max(early, late)} of {len(ids) - 1} rows and token t at "
            f"only {same} of {len(ids)}; row t must score token t given the tokens before it"
        )


def _select_words(tokens: CaptionTokens, words: Sequence[int | str] | None) -> list[int]:
    if not words:
        return list(range(len(tokens.words)))
    chosen = []
    lowered = [text.lower() for text in tokens.words]  # "red" picks "Red": the caption keeps the model's case
    for word in words:
        if isinstance(word, (int, np.integer)) or str(word).lstrip("-").isdigit():
            position = int(word)
            if not 0 <= position < len(tokens.words):
                raise InputError(f"word position {position} is outside the caption's {len(tokens.words)} words")
            chosen.append(position)
        elif word.lower() in lowered:
            chosen.append(lowered.index(word.lower()))
        else:
            raise InputError(f"word {word!r} is not in the caption {' '.join(tokens.words)!r}")
    return chosen


def attention_maps(output: CaptionScores, spans: Sequence[Sequence[int]], item: int = 0) -> np.ndarray | None:
    """The model's attention for each word of image ``item`` (mean over its tokens' steps) at
    its own grid: (T, h, w), or None when the model has no attention."""
    if output.attention is None:
        return None
    steps = torch.stack([output.attention[item, list(span)].mean(dim=0) for span in spans])
    return steps.detach().float().numpy()


# One planned target of an image: ("word", (positions, token ids)), ("caption", ...) or
# ("contrast", (position, token id)).
_Plan = tuple[str, tuple]


def _item_plan(tokens: CaptionTokens, chosen: Sequence[int], whole_caption: bool, contrast: bool) -> tuple[list[_Plan], int]:
    """An image's targets in order (its words, the whole caption if asked, the contrasts at
    each word's first token) and how many of them are explained (all but the contrasts)."""
    plan: list[_Plan] = [("word", (tokens.spans[w], tuple(tokens.ids[p] for p in tokens.spans[w]))) for w in chosen]
    if whole_caption:
        plan.append(("caption", (tuple(range(len(tokens.ids))), tokens.ids)))
    explained = len(plan)
    if contrast:
        plan += [("contrast", (tokens.spans[w][0], tokens.ids[tokens.spans[w][0]])) for w in chosen]
    return plan, explained


def _column_targets(plans: Sequence[Sequence[_Plan]], score: str) -> list[Target]:
    """Target column j of a minibatch: per image its j-th planned target, or nothing (0). A
    column mixing kinds (one image's word beside another's contrast) sums one per-image target
    per kind; each scores only its own images, so every image still gets its own scalar."""
    columns = []
    for j in range(max(len(plan) for plan in plans)):
        entries = [plan[j] if j < len(plan) else None for plan in plans]
        parts: list[Target] = []
        for kind in ("word", "caption", "contrast"):
            picked = tuple(entry[1] if entry is not None and entry[0] == kind else None for entry in entries)
            if all(value is None for value in picked):
                continue
            if kind == "contrast":
                parts.append(ItemWordContrastTarget(picked))
            else:
                parts.append(ItemWordTarget(picked, score if kind == "word" else "logprob"))
        columns.append(parts[0] if len(parts) == 1 else SummedTarget(tuple(parts)))
    return columns
