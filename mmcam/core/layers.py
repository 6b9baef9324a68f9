"""Finding the layer to hook: by module, by dotted name, or automatically."""

from __future__ import annotations

import difflib

from torch import nn

from ..errors import InputError

LayerSpec = nn.Module | str | None


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` for ``layer``: a submodule of ``model``, its dotted name
    (``"layer4"``, ``"encoder.stages.3"``, ``"blocks.-1"`` with negative indices into
    sequential containers) or ``None`` for :func:`default_layer`."""
    if layer is None:
        return default_layer(model)
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ValueError(f"the layer {type(layer).__name__} is not a submodule of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module, a dotted name or None, not {type(layer).__name__}")
    module: nn.Module = model
    for part in layer.split("."):
        child = _child(module, part)
        if child is None:
            raise InputError(_unknown_layer_message(model, layer))
        module = child
    return layer, module


def _child(module: nn.Module, part: str) -> nn.Module | None:
    if part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
        index = int(part)
        return module[index] if -len(module) <= index < len(module) else None
    child = getattr(module, "_modules", {}).get(part)
    return child


def _unknown_layer_message(model: nn.Module, layer: str) -> str:
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    top_level = [name for name in names if "." not in name]
    candidates = close or top_level
    return f"unknown layer {layer!r}; candidates: {', '.join(candidates[:12])}"


def default_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The vision encoder's last spatial stage.

    Transformers (ViT, DeiT, Swin, ...): the last convolution is a patch embedding (stride =
    kernel) followed by a list of repeated blocks; the default is the last block, or the one
    before it when the model pools a class token (the last block's patch tokens never reach a
    class-token score). CNNs: start from the last ``nn.Conv2d`` in module order and climb to the
    largest enclosing container whose last convolution is still that one (``layer4`` in a
    ResNet, the last stage of a ConvNeXt), stopping below the model itself and at flat lists of
    convolutions (VGG's ``features``), so the hooked output includes the stage's residual sum.
    Normalisation and activation modules that directly follow it as siblings (EfficientNet's
    ``conv_head`` -> ``bn2``) are included too: the map is taken on the rectified features the
    head pools.
    """
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ValueError(
            "no Conv2d layer found to hook; pass layer= (a module or a dotted name) and, for "
            "token layouts, a reshape transform"
        )
    last_conv = convs[-1]
    blocks = _blocks_after_patch_embedding(model, last_conv)
    if blocks is not None:
        return resolve_layer(model, f"{blocks}.{_last_useful_block(model, blocks)}")
    parts = last_conv.split(".")
    chosen = last_conv
    for depth in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:depth])
        convs_inside = [name for name in convs if name.startswith(prefix + ".")]
        container = resolve_layer(model, prefix)[1]
        flat_conv_list = isinstance(container, nn.Sequential) and (
            sum(isinstance(child, nn.Conv2d) for child in container.children()) >= 2
        )
        if convs_inside[-1] != last_conv or flat_conv_list:
            break
        chosen = prefix
    return resolve_layer(model, _through_norm_and_activation(model, chosen))


def _blocks_after_patch_embedding(model: nn.Module, last_conv: str) -> str | None:
    """Name of the last list of repeated blocks registered after ``last_conv`` (a ViT's blocks,
    the last stage of a Swin), when that convolution is a patch embedding (stride = kernel size
    > 1); else None."""
    conv = resolve_layer(model, last_conv)[1]
    if not (conv.kernel_size == conv.stride and max(conv.kernel_size) > 1):
        return None
    names = [name for name, _ in model.named_modules()]
    after = names[names.index(last_conv) + 1 :]
    for name in reversed(after):
        container = resolve_layer(model, name)[1] if name else model
        children = list(container.children())
        if (
            isinstance(container, (nn.ModuleList, nn.Sequential))
            and len(children) >= 2
            and len({type(child) for child in children}) == 1
            and any(isinstance(module, nn.Linear) for module in children[0].modules())
        ):
            return name
    return None


def _last_useful_block(model: nn.Module, blocks: str) -> int:
    """-1, or -2 when the model's score reads a class token (timm ``global_pool="token"``, or a
    ``cls_token`` without another pooling)."""
    count = len(resolve_layer(model, blocks)[1])
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str):
        reads_class_token = pool == "token"
    else:
        reads_class_token = any(name.split(".")[-1] in ("cls_token", "class_token") for name, _ in model.named_parameters())
    return count - 2 if reads_class_token and count >= 2 else count - 1


def _through_norm_and_activation(model: nn.Module, name: str) -> str:
    parent_name, _, child = name.rpartition(".")
    parent = resolve_layer(model, parent_name)[1] if parent_name else model
    siblings = list(parent._modules)
    position = siblings.index(child)
    for sibling in siblings[position + 1 :]:
        if not _is_norm_or_activation(parent._modules[sibling]):
            break
        child = sibling
    return f"{parent_name}.{child}" if parent_name else child


def _is_norm_or_activation(module: nn.Module | None) -> bool:
    if module is None:
        return False
    kind = type(module).__name__
    activations = ("ReLU", "ReLU6", "SiLU", "GELU", "Hardswish", "LeakyReLU", "ELU", "Mish")
    return "Norm" in kind or kind in activations
