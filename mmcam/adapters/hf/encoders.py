"""CNN encoders for ``VisionEncoderDecoderModel``: ConvNeXt (v1, v2) and ResNet as token encoders.

A text decoder cross-attends to (B, N, C) tokens and ``VisionEncoderDecoderModel`` reads the
encoder's ``config.hidden_size``; the CNN models give a (B, C, h, w) map and name their widths
``hidden_sizes``. These subclasses set ``hidden_size`` to the last stage's width and return the
last stage's map as h*w tokens. They add no weights, so their state dict is the CNN's own:

>>> encoder = ConvNextTokenEncoder(ConvNextConfig(num_stages=4, hidden_sizes=[96, 192, 384, 768]))
>>> model = VisionEncoderDecoderModel(encoder=encoder, decoder=GPT2LMHeadModel(decoder_config))
>>> model.save_pretrained(folder)          # mmcam.load("hf:" + folder) loads it back

Grad-CAM hooks ``encoder.encoder.stages[-1]``, whose output is still the (B, C, h, w) map.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import ConvNextModel, ConvNextV2Model, ResNetModel
from transformers.modeling_outputs import BaseModelOutput


class _StageTokens:
    """Mixin over a CNN ``PreTrainedModel``: the last stage's map (B, C, h, w) as tokens
    (B, h*w, C), row by row."""

    def __init__(self, config: Any) -> None:
        config.hidden_size = config.hidden_sizes[-1]
        super().__init__(config)  # type: ignore[call-arg]

    def forward(self, pixel_values: Any = None, output_hidden_states: bool | None = None, **_: Any) -> BaseModelOutput:
        output = super().forward(pixel_values, output_hidden_states=output_hidden_states)  # type: ignore[misc]
        tokens = output.last_hidden_state.flatten(2).transpose(1, 2)
        return BaseModelOutput(last_hidden_state=tokens, hidden_states=output.hidden_states)


class ConvNextTokenEncoder(_StageTokens, ConvNextModel):
    """ConvNeXt whose output is its last stage as tokens (see the module docstring)."""


class ConvNextV2TokenEncoder(_StageTokens, ConvNextV2Model):
    """ConvNeXt V2 whose output is its last stage as tokens (see the module docstring)."""


class ResNetTokenEncoder(_StageTokens, ResNetModel):
    """ResNet whose output is its last stage as tokens (see the module docstring)."""


TOKEN_ENCODERS: dict[str, type[nn.Module]] = {
    "convnext": ConvNextTokenEncoder,
    "convnextv2": ConvNextV2TokenEncoder,
    "resnet": ResNetTokenEncoder,
}


def as_token_encoder(encoder: nn.Module) -> nn.Module:
    """The same CNN (same config, same weights) as a token encoder; ``VisionEncoderDecoderModel``
    loads a saved CNN encoder as the plain model class, whose 4-D output its decoder cannot read."""
    token_class = TOKEN_ENCODERS[encoder.config.model_type]
    if isinstance(encoder, token_class):
        return encoder
    rebuilt = token_class(encoder.config)
    rebuilt.load_state_dict(encoder.state_dict())
    parameter = next(encoder.parameters())
    return rebuilt.to(device=parameter.device, dtype=parameter.dtype).train(encoder.training)
