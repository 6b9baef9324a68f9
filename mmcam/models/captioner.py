"""The shipped captioner for generated scenes: a small Show-Attend-and-Tell model (Xu et al., 2015).

A five-layer CNN turns a 128x128 image into a 16x16 grid of 128-d annotation vectors (the layer
Grad-CAM hooks: ``ShapesCaptioner.encoder``). A learned positional embedding is added after it, so
the grid knows where each cell is without the encoder's output depending on position. An LSTM
decoder attends over the grid with additive (Bahdanau) attention at every word.

The encoder is kept local on purpose (receptive field 63 px, GroupNorm rather than BatchNorm so
eval mode matches training): a word's heatmap can then only light up where the evidence is.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmcam.data.scenes import COLORS, SHAPES

PAD, START, END = "<pad>", "<start>", "<end>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, START, END)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "shapes_captioner.safetensors"

# Images arrive as RGB in [0, 1]; the encoder sees them in [-1, 1].
_PIXEL_CENTRE, _PIXEL_HALF_RANGE = 0.5, 0.5


def default_vocab() -> list[str]:
    """``<pad>``, ``<start>``, ``<end>``, then "a", "and", the colours and the shapes."""
    return [*SPECIAL_TOKENS, "a", "and", *COLORS, *SHAPES]


@dataclass(frozen=True)
class CaptionerConfig:
    """Hyperparameters that fix the architecture; saved as JSON beside the weights.

    The encoder has one 3x3 conv + GroupNorm + ReLU block per entry of ``channels`` (the first
    block has no GroupNorm); the first
    ``downsampling_layers`` have stride 2 and the last is dilated 2, so the output grid is
    ``image_size / 2**downsampling_layers`` cells a side.
    """

    vocab: list[str] = field(default_factory=default_vocab)
    image_size: int = 128
    channels: tuple[int, ...] = (32, 64, 96, 96, 128)
    downsampling_layers: int = 3
    norm_groups: int = 8
    embed_dim: int = 64
    hidden_dim: int = 256
    attention_dim: int = 128

    @property
    def grid_size(self) -> int:
        return self.image_size // 2**self.downsampling_layers

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]


def _conv_block(in_channels: int, out_channels: int, stride: int, dilation: int, groups: int | None) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation)
    norm = [nn.GroupNorm(groups, out_channels)] if groups else []
    return [conv, *norm, nn.ReLU()]


def build_encoder(config: CaptionerConfig) -> nn.Sequential:
    """The CNN: ``(N, 3, S, S)`` normalised images -> ``(N, C, G, G)`` non-negative features."""
    layers: list[nn.Module] = []
    in_channels = 3
    last = len(config.channels) - 1
    for index, out_channels in enumerate(config.channels):
        stride = 2 if index < config.downsampling_layers else 1
        dilation = 2 if index == last else 1
        # No norm on the first layer: normalising raw colours by image statistics that depend on
        # object sizes confused black with gray and blue with teal.
        groups = config.norm_groups if index > 0 else None
        layers += _conv_block(in_channels, out_channels, stride, dilation, groups)
        in_channels = out_channels
    return nn.Sequential(*layers)


@dataclass
class DecoderState:
    """What the decoder carries from one word to the next, for a batch of B sequences.

    ``annotations`` ``(B, G*G, C)`` are the grid vectors attended over; ``attention_keys``
    ``(B, G*G, A)`` their projection for the attention score, computed once per image.
    """

    annotations: Tensor
    attention_keys: Tensor
    hidden: Tensor  # (B, hidden_dim)
    cell: Tensor  # (B, hidden_dim)

    def select(self, rows: Tensor) -> DecoderState:
        """The state of sequences ``rows`` (a 1-D index tensor), e.g. the surviving beams."""
        return DecoderState(self.annotations[rows], self.attention_keys[rows], self.hidden[rows], self.cell[rows])


class ShapesCaptioner(nn.Module):
    """Show-Attend-and-Tell captioner for generated scenes.

    Attributes:
        vocab: token strings; index 0 ``<pad>``, 1 ``<start>``, 2 ``<end>``, then the words.
        encoder: the CNN whose output ``(N, 128, 16, 16)`` is the layer to explain.
    """

    def __init__(self, config: CaptionerConfig | None = None) -> None:
        super().__init__()
        self.config = config or CaptionerConfig()
        cfg = self.config
        if list(cfg.vocab[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"vocab must start with {', '.join(SPECIAL_TOKENS)}; got {cfg.vocab[:3]}")
        self.vocab: list[str] = list(cfg.vocab)
        self.token_ids: dict[str, int] = {token: index for index, token in enumerate(self.vocab)}
        self.pad_id, self.start_id, self.end_id = (self.token_ids[t] for t in SPECIAL_TOKENS)

        self.encoder = build_encoder(cfg)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(1, cfg.feature_dim, cfg.grid_size, cfg.grid_size))
        self.word_embedding = nn.Embedding(len(self.vocab), cfg.embed_dim)
        self.init_hidden = nn.Linear(cfg.feature_dim, cfg.hidden_dim)
        self.init_cell = nn.Linear(cfg.feature_dim, cfg.hidden_dim)
        self.attention_key = nn.Linear(cfg.feature_dim, cfg.attention_dim)
        self.attention_query = nn.Linear(cfg.hidden_dim, cfg.attention_dim)
        self.attention_score = nn.Linear(cfg.attention_dim, 1)
        self.lstm = nn.LSTMCell(cfg.embed_dim + cfg.feature_dim, cfg.hidden_dim)
        self.output = nn.Linear(cfg.hidden_dim + cfg.feature_dim, len(self.vocab))

    # -- words <-> ids ---------------------------------------------------------------------------

    def encode_words(self, words: list[str] | tuple[str, ...]) -> list[int]:
        """Token ids of caption words (no ``<start>``/``<end>``); unknown words are an error."""
        unknown = [word for word in words if word not in self.token_ids or word in SPECIAL_TOKENS]
        if unknown:
            raise ValueError(f"words not in the captioner's vocabulary: {unknown}; known: {self.vocab[3:]}")
        return [self.token_ids[word] for word in words]

    def decode_ids(self, ids: list[int]) -> list[str]:
        """Caption words of generated ids."""
        return [self.vocab[index] for index in ids]

    # -- the model -------------------------------------------------------------------------------

    def start_decoding(self, images: Tensor) -> DecoderState:
        """Encode ``images`` ``(N, 3, S, S)`` RGB in [0, 1] and set up the decoder's first state."""
        expected = (3, self.config.image_size, self.config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (N, {', '.join(map(str, expected))}); got {tuple(images.shape)}")
        features = self.encoder((images - _PIXEL_CENTRE) / _PIXEL_HALF_RANGE)  # (N, C, G, G)
        annotations = (features + self.position_embedding).flatten(2).transpose(1, 2)  # (N, G*G, C)
        mean_annotation = annotations.mean(dim=1)
        return DecoderState(
            annotations=annotations,
            attention_keys=self.attention_key(annotations),
            hidden=torch.tanh(self.init_hidden(mean_annotation)),
            cell=torch.tanh(self.init_cell(mean_annotation)),
        )

    def decode_step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, Tensor, DecoderState]:
        """Read one token per sequence and score the next.

        Attention (Bahdanau et al., 2015, eq. 6; Xu et al., 2015, eq. 4-5) with the previous hidden
        state h: ``e_i = w^T tanh(K a_i + Q h)``, ``alpha = softmax(e)``, context ``z = sum_i alpha_i a_i``.
        Then ``h', c' = LSTM([embed(token), z], (h, c))`` and ``logits = W [h', z]``.

        Args:
            tokens: ``(B,)`` long, the current token of each sequence.
        Returns:
            logits ``(B, V)``, attention ``(B, G*G)`` and the next state.
        """
        query = self.attention_query(state.hidden)[:, None, :]  # (B, 1, A)
        scores = self.attention_score(torch.tanh(state.attention_keys + query)).squeeze(-1)  # (B, G*G)
        attention = torch.softmax(scores, dim=-1)
        context = torch.bmm(attention[:, None, :], state.annotations).squeeze(1)  # (B, C)
        hidden, cell = self.lstm(torch.cat([self.word_embedding(tokens), context], dim=-1), (state.hidden, state.cell))
        logits = self.output(torch.cat([hidden, context], dim=-1))
        next_state = DecoderState(state.annotations, state.attention_keys, hidden, cell)
        return logits, attention, next_state

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced scores of every next token.

        Args:
            images: ``(N, 3, 128, 128)`` float RGB in [0, 1].
            tokens: ``(N, L)`` long, starting with ``<start>``.
        Returns:
            logits ``(N, L, V)``: ``logits[:, t]`` scores the token that follows ``tokens[:, t]``;
            attention ``(N, L, 16, 16)``: the soft-attention weights used at each step (sum to 1).
        """
        if tokens.ndim != 2 or tokens.shape[0] != images.shape[0]:
            raise ValueError(f"tokens must be (N, L) with N = {images.shape[0]} images; got {tuple(tokens.shape)}")
        state = self.start_decoding(images)
        step_logits, step_attention = [], []
        for t in range(tokens.shape[1]):
            logits, attention, state = self.decode_step(tokens[:, t], state)
            step_logits.append(logits)
            step_attention.append(attention)
        grid = self.config.grid_size
        attention_maps = torch.stack(step_attention, dim=1).unflatten(-1, (grid, grid))
        return torch.stack(step_logits, dim=1), attention_maps

    # -- captioning ------------------------------------------------------------------------------

    def _next_token_logprobs(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(log_softmax(logits), the same with <pad> and <start> forbidden)``, both ``(B, V)``."""
        logprobs = torch.log_softmax(logits, dim=-1)
        choosable = logprobs.clone()
        choosable[:, [self.pad_id, self.start_id]] = float("-inf")
        return logprobs, choosable

    @torch.no_grad()
    def generate(self, images: Tensor, max_len: int = 12, beam_size: int = 1) -> list[tuple[list[int], list[float]]]:
        """Caption each image: its word ids (no ``<start>``/``<end>``) and each id's log-prob.

        The ``<end>`` step's log-prob is not included. Every log-prob equals the teacher-forced
        ``log_softmax(forward(image, [<start>] + ids)[0])[0, t, ids[t]]``. ``beam_size == 1`` is
        batched greedy decoding; larger beams rank captions by their total log-prob including
        ``<end>`` (no length normalisation). At most ``max_len`` words are generated.
        """
        if beam_size < 1 or max_len < 1:
            raise ValueError(f"beam_size and max_len must be >= 1; got {beam_size} and {max_len}")
        if beam_size == 1:
            return self._greedy(images, max_len)
        return [self._beam_search(image[None], max_len, beam_size) for image in images]

    def _greedy(self, images: Tensor, max_len: int) -> list[tuple[list[int], list[float]]]:
        count = images.shape[0]
        state = self.start_decoding(images)
        tokens = torch.full((count,), self.start_id, dtype=torch.long, device=images.device)
        captions: list[tuple[list[int], list[float]]] = [([], []) for _ in range(count)]
        running = torch.ones(count, dtype=torch.bool)
        for _ in range(max_len):
            logits, _, state = self.decode_step(tokens, state)
            logprobs, choosable = self._next_token_logprobs(logits)
            tokens = choosable.argmax(dim=-1)
            for row in running.nonzero().flatten().tolist():
                token = int(tokens[row])
                if token == self.end_id:
                    running[row] = False
                else:
                    captions[row][0].append(token)
                    captions[row][1].append(float(logprobs[row, token]))
            if not running.any():
                break
        return captions

    def _beam_search(self, image: Tensor, max_len: int, beam_size: int) -> tuple[list[int], list[float]]:
        """Beam search for one image ``(1, 3, S, S)``; keeps ``beam_size`` unfinished captions."""
        state = self.start_decoding(image)
        tokens = torch.tensor([self.start_id], device=image.device)
        beams: list[tuple[list[int], list[float]]] = [([], [])]
        totals = torch.zeros(1, device=image.device)  # (beams,) sum of each beam's log-probs
        finished: list[tuple[float, list[int], list[float]]] = []
        for _ in range(max_len):
            logits, _, state = self.decode_step(tokens, state)
            logprobs, choosable = self._next_token_logprobs(logits)
            for beam, (ids, id_logprobs) in enumerate(beams):
                finished.append((float(totals[beam] + logprobs[beam, self.end_id]), ids, id_logprobs))
            choosable[:, self.end_id] = float("-inf")
            candidates = (totals[:, None] + choosable).flatten()
            totals, flat_index = candidates.topk(min(beam_size, candidates.numel()))
            rows = torch.div(flat_index, len(self.vocab), rounding_mode="floor")
            tokens = flat_index % len(self.vocab)
            beams = [
                (beams[row][0] + [token], beams[row][1] + [float(logprobs[row, token])])
                for row, token in zip(rows.tolist(), tokens.tolist(), strict=True)
            ]
            state = state.select(rows)
            # Log-probs are <= 0, so no unfinished beam can overtake the best finished caption.
            if max(score for score, _, _ in finished) >= float(totals[0]):
                break
        else:
            finished += [(float(total), ids, id_logprobs) for total, (ids, id_logprobs) in zip(totals, beams)]
        _, ids, id_logprobs = max(finished, key=lambda item: item[0])
        return ids, id_logprobs


def _config_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def save_shapes_captioner(model: ShapesCaptioner, path: str | os.PathLike) -> None:
    """Write the weights (float16 safetensors) and, beside them, a JSON with vocab and hyperparameters."""
    weights_path = Path(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # float16 halves the shipped file; the loader widens back to float32 before any computation.
    tensors = {name: tensor.detach().to("cpu", torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(weights_path))
    config = asdict(model.config) | {"stored_dtype": "float16"}
    _config_path(weights_path).write_text(json.dumps(config, indent=2) + "\n")


def load_shapes_captioner(path: str | os.PathLike | None = None) -> ShapesCaptioner:
    """The captioner saved at ``path`` (default: the shipped weights), in eval mode, float32, on CPU."""
    weights_path = Path(path) if path is not None else DEFAULT_WEIGHTS
    config_path = _config_path(weights_path)
    if not weights_path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"need both {weights_path} and {config_path}")
    settings = json.loads(config_path.read_text())
    settings.pop("stored_dtype", None)
    settings["channels"] = tuple(settings["channels"])
    model = ShapesCaptioner(CaptionerConfig(**settings))
    state = {name: tensor.float() for name, tensor in load_file(str(weights_path)).items()}
    model.load_state_dict(state)
    return model.eval()
