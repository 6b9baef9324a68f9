"""Explaining transformers captioners and VQA models: ``mmcam.load("hf:FOLDER")``.

| module | holds |
|---|---|
| ``loading`` | folder / offline-cache resolution, the supported classes and their default layers |
| ``captioning`` | y_t of a caption word for BLIP, BLIP-2, GIT, VisionEncoderDecoder (teacher forcing) |
| ``vqa`` | y^c of an answer: ViLT's logit, BLIP's generated-answer log-prob |
| ``words`` | subword tokens -> words (spans), special tokens left out |
| ``preprocess``, ``layout`` | images as the image processor sizes them; tokens -> patch grid |
| ``encoders`` | ConvNeXt / ResNet as VisionEncoderDecoder encoders |
"""

from .captioning import TransformersCaptioner
from .encoders import ConvNextTokenEncoder, ConvNextV2TokenEncoder, ResNetTokenEncoder
from .layout import PatchTokens
from .loading import FAMILIES, load_hf, resolve_folder
from .preprocess import ImageSettings
from .vqa import BlipAnswerScorer, GenerativeVQAAdapter, ViltScorer

__all__ = [
    "FAMILIES",
    "BlipAnswerScorer",
    "ConvNextTokenEncoder",
    "ConvNextV2TokenEncoder",
    "GenerativeVQAAdapter",
    "ImageSettings",
    "PatchTokens",
    "ResNetTokenEncoder",
    "TransformersCaptioner",
    "ViltScorer",
    "load_hf",
    "resolve_folder",
]
