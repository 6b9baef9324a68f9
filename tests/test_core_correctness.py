"""Issue 10's core defects, each reproduced: cut-off layers, Guided Backprop on smooth
activations, in-place ReLU writes, other threads' forwards, channels-last and token layouts,
default layers, signed activations, modules that run twice, non-finite maps."""

from __future__ import annotations

import threading
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import TinyCNN
from mmcam import ClassTarget, GradCAM
from mmcam.core import default_layer


def _maps(model, layer, images, *, guided=False, method="gradcam", **options):
    with GradCAM(model, layer, method=method, **options) as cam:
        record = cam.gradients(images, [ClassTarget(0), ClassTarget(1)], guided=guided)
        return cam.maps(record, upsample=False, normalize=False), record


# 1. A layer cut off from the score -------------------------------------------------------------


class FrozenBackbone(nn.Module):
    """A frozen backbone run under no_grad inside forward, with work after the hooked layer
    still inside the no_grad block; the head outside it."""

    def __init__(self, no_grad: bool) -> None:
        super().__init__()
        self.no_grad = no_grad
        torch.manual_seed(0)
        self.body = TinyCNN()
        self.head = nn.Linear(8, 3)

    def features(self, x):
        body = self.body
        return body.mix(body.relu2(body.conv2(body.relu1(body.conv1(x))))).relu().mean(dim=(-2, -1))

    def forward(self, x):
        if self.no_grad:
            with torch.no_grad():
                pooled = self.features(x)
        else:
            pooled = self.features(x)
        return self.head(pooled)


@pytest.mark.parametrize("guided", [False, True])
def test_frozen_backbone_under_no_grad_gives_the_same_maps(images, guided) -> None:
    frozen, reference = FrozenBackbone(no_grad=True), FrozenBackbone(no_grad=False)
    reference.load_state_dict(frozen.state_dict())
    for parameter in frozen.body.parameters():
        parameter.requires_grad_(False)
    maps, record = _maps(frozen, "body.relu2", images, guided=guided, method="hirescam")
    expected, expected_record = _maps(reference, "body.relu2", images, guided=guided, method="hirescam")
    assert maps.amax() > 0
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    if guided:
        torch.testing.assert_close(record.input_gradients, expected_record.input_gradients, rtol=1e-5, atol=1e-7)
        assert record.input_gradients.abs().amax() > 0


class Detaching(TinyCNN):
    def forward(self, x):
        features = self.relu2(self.conv2(self.relu1(self.conv1(x)))).detach()
        return self.head(F.relu(self.mix(features)).mean(dim=(-2, -1)))


@pytest.mark.parametrize("guided", [False, True])
def test_a_detach_after_the_layer_is_named_in_one_error(images, guided) -> None:
    torch.manual_seed(0)
    with GradCAM(Detaching().eval(), "relu2") as cam:
        with pytest.raises(ValueError, match=r"cuts the autograd graph after layer 'relu2' \(detach\(\) x1\)"):
            cam.gradients(images, [ClassTarget(0)], guided=guided)


# 2. Guided Backprop on smooth activations ------------------------------------------------------


class SmoothNet(nn.Module):
    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = activation
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.act2 = type(activation)() if not isinstance(activation, nn.GELU) else nn.GELU(approximate="tanh")
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(-2, -1)))


def _reference_guided(model: nn.Module, images: torch.Tensor, target: int) -> torch.Tensor:
    """An independent Guided Backprop: module hooks replace each activation's input gradient by
    max(f'(x), 0) * max(grad_out, 0), f' computed by autograd from the saved input."""
    inputs: dict[nn.Module, torch.Tensor] = {}
    handles = []
    for module in (model.act1, model.act2):
        handles.append(module.register_forward_hook(lambda m, args, out: inputs.__setitem__(m, args[0].detach())))

        def backward(m, grad_input, grad_output):
            x = inputs[m].clone().requires_grad_(True)
            with torch.enable_grad():
                (slope,) = torch.autograd.grad(m.forward(x).sum(), x)
            return (slope.clamp(min=0) * grad_output[0].clamp(min=0),)

        handles.append(module.register_full_backward_hook(backward))
    try:
        leaf = images.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model(leaf)[:, target].sum(), leaf)
    finally:
        for handle in handles:
            handle.remove()
    return gradient


@pytest.mark.parametrize("activation", [nn.GELU(), nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.ELU(), nn.LeakyReLU()])
def test_guided_rule_on_smooth_activations_matches_an_independent_implementation(images, activation) -> None:
    model = SmoothNet(activation).eval()
    with GradCAM(model, "act2") as cam:
        record = cam.gradients(images, [ClassTarget(1)], guided=True)
    reference = _reference_guided(model, images, 1)
    torch.testing.assert_close(record.input_gradients[:, 0], reference, rtol=1e-5, atol=1e-7)
    plain_leaf = images.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(plain_leaf)[:, 1].sum(), plain_leaf)
    assert not torch.allclose(reference, plain, atol=1e-6)  # the rule did something
    assert sum(record.guided_activations.values()) == 2


def test_composite_activation_modules_are_gated_and_reported(images) -> None:
    from transformers.activations import NewGELUActivation, QuickGELUActivation

    model = SmoothNet(nn.GELU()).eval()
    model.act1, model.act2 = QuickGELUActivation(), NewGELUActivation()
    with GradCAM(model, "act2") as cam:
        record = cam.gradients(images, [ClassTarget(1)], guided=True)
    assert record.guided_activations == {"QuickGELUActivation": 1, "NewGELUActivation": 1}
    torch.testing.assert_close(record.input_gradients[:, 0], _reference_guided(model, images, 1), rtol=1e-5, atol=1e-7)


def test_guided_backprop_refuses_a_model_without_activations(images) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(images)
    with GradCAM(model, "0") as cam, pytest.raises(RuntimeError, match="no activation function"):
        cam.gradients(images, [ClassTarget(0)], guided=True)


# 3. Guided mode never changes a forward value ---------------------------------------------------


class InPlaceWrite(TinyCNN):
    def forward(self, x):
        hidden = self.conv1(x)
        hidden.relu_()  # the result is unused: the model relies on the write
        features = self.relu2(self.conv2(hidden))
        return self.head(self.mix(features).mean(dim=(-2, -1)))


def test_in_place_relu_write_is_kept_in_guided_mode(images) -> None:
    torch.manual_seed(0)
    model = InPlaceWrite().eval()
    with GradCAM(model, "relu2") as cam:
        plain = cam.gradients(images, [ClassTarget(0), ClassTarget(2)])
        guided = cam.gradients(images, [ClassTarget(0), ClassTarget(2)], guided=True)
    torch.testing.assert_close(guided.scores, plain.scores, rtol=0, atol=0)
    torch.testing.assert_close(guided.scores, model(images)[:, [0, 2]].detach(), rtol=0, atol=0)
    torch.testing.assert_close(guided.gradients, plain.gradients)
    assert guided.guided_activations == {"relu": 2}


def test_guided_mode_is_off_after_the_call(tiny_cnn, images) -> None:
    with GradCAM(tiny_cnn, "relu2") as cam:
        cam.gradients(images, [ClassTarget(1)], guided=True)
    leaf = images.clone().requires_grad_(True)
    (after,) = torch.autograd.grad(tiny_cnn(leaf)[:, 1].sum(), leaf)
    # The ordinary gradient, by hand-free reference: a fresh copy of the model never guided.
    fresh = TinyCNN().eval()
    fresh.load_state_dict(tiny_cnn.state_dict())
    leaf = images.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(fresh(leaf)[:, 1].sum(), leaf)
    torch.testing.assert_close(after, reference, rtol=0, atol=0)
    assert (after < 0).any()  # guided gradients would be clamped at the ReLUs: this one is not


# 4. Captures bound to their own call -----------------------------------------------------------


def test_forwards_in_other_threads_do_not_reach_the_capture(tiny_cnn, images) -> None:
    with GradCAM(tiny_cnn, "relu2", method="hirescam") as cam:
        expected = cam(images, [ClassTarget(0), ClassTarget(3)])
    other = torch.rand(3, 3, 16, 16)
    stop = threading.Event()

    def hammer() -> None:
        with torch.no_grad():
            while not stop.is_set():
                tiny_cnn(other)  # the user's own forward, outside mmcam's lock

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        with GradCAM(tiny_cnn, "relu2", method="hirescam") as cam:
            results = [cam(images, [ClassTarget(0), ClassTarget(3)]) for _ in range(15)]
    finally:
        stop.set()
        thread.join()
    for result in results:
        torch.testing.assert_close(result, expected)


# 6. Layouts -------------------------------------------------------------------------------------


def _tiny_swin():
    torch.manual_seed(0)
    return timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=3
    ).eval()


def test_channels_last_swin_stage_is_read_as_a_grid() -> None:
    model = _tiny_swin()
    images = torch.rand(2, 3, 32, 32)
    assert default_layer(model)[0] == "layers.1"  # the last stage (one block each here)
    maps, record = _maps(model, None, images, method="hirescam")
    explicit, _ = _maps(model, None, images, method="hirescam", reshape=lambda a: a.permute(0, 3, 1, 2))
    assert record.layout == "NHWC 4x4"
    assert maps.shape == (2, 2, 4, 4)
    torch.testing.assert_close(maps, explicit)


def _tiny_vit(**options):
    torch.manual_seed(0)
    config = dict(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=3)
    return timm.models.vision_transformer.VisionTransformer(**{**config, **options}).eval()


@pytest.mark.parametrize(
    ("options", "layer", "prefix"),
    [
        ({}, "blocks.1", 1),  # class token pooled: the last block's patch tokens never reach it
        ({"global_pool": "avg", "reg_tokens": 4}, "blocks.2", 5),
        ({"global_pool": "avg", "class_token": False}, "blocks.2", 0),
    ],
)
def test_vit_default_layer_and_token_layout(options, layer, prefix) -> None:
    model = _tiny_vit(**options)
    images = torch.rand(2, 3, 32, 32)
    assert default_layer(model)[0] == layer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-zero warning on the default layer
        maps, record = _maps(model, None, images)
    assert record.layout == f"tokens 4x4 after {prefix} prefix token{'s' if prefix != 1 else ''}"
    assert (maps.flatten(2).amax(dim=2) > 0).all()


def test_last_block_of_a_class_token_vit_warns_of_all_zero_maps() -> None:
    model = _tiny_vit()
    with pytest.warns(UserWarning, match=r"gradient of target\(s\) \[0, 1\] at layer 'blocks.2' is zero everywhere"):
        maps, _ = _maps(model, "blocks.2", torch.rand(1, 3, 32, 32))
    assert maps.abs().amax() == 0


def test_non_square_images_give_non_square_token_grids() -> None:
    model = _tiny_vit(dynamic_img_size=True, global_pool="avg")
    maps, record = _maps(model, None, torch.rand(1, 3, 32, 48))
    assert record.layout == "tokens 4x6 after 1 prefix token"
    assert maps.shape == (1, 2, 4, 6)


def test_sequence_first_tokens_are_transposed() -> None:
    class SequenceFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.encoder = nn.Identity()
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).permute(2, 0, 1)  # (L, N, C)
            hidden = torch.tanh(self.encoder(tokens))
            return self.head(hidden.mean(dim=0))

    model, images = SequenceFirst().eval(), torch.rand(3, 3, 16, 24)
    maps, record = _maps(model, "encoder", images, method="hirescam")
    grid, _ = _maps(model, "embed", images, method="hirescam")
    assert record.layout == "tokens 4x6 after 0 prefix tokens, sequence-first"
    torch.testing.assert_close(maps, grid, rtol=1e-5, atol=1e-7)


def test_a_shape_with_no_grid_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    images = torch.rand(1, 3, 10, 10)
    model(images)
    with GradCAM(model, "1") as cam, pytest.raises(ValueError, match=r"layer '1' gives activations of shape \(1, 256\)"):
        cam(images, [ClassTarget(0)])


# 7. Default layers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda: torchvision.models.convnext_tiny(), "features"),
        (lambda: torchvision.models.vit_b_16(), "encoder.layers.10"),
        (lambda: torchvision.models.swin_t(), "features.7.1"),
        (lambda: torchvision.models.resnet18(), "layer4"),
        (lambda: torchvision.models.vgg11(), "features.19"),
        (lambda: timm.create_model("efficientnet_b0"), "bn2"),
        (lambda: timm.create_model("convnext_atto"), "stages"),
    ],
)
def test_default_layer_is_the_last_spatial_stage(factory, expected) -> None:
    assert default_layer(factory())[0] == expected


def test_torchvision_convnext_default_layer_gives_the_last_stage_output() -> None:
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(num_classes=3).eval()
    images = torch.rand(1, 3, 64, 64)
    with GradCAM(model) as cam:
        record = cam.gradients(images, [ClassTarget(0)])
    with torch.no_grad():
        stage = model.features(images)
    torch.testing.assert_close(record.activations, stage)
    assert record.layout == "NCHW 2x2"


# Suspected defects, settled ---------------------------------------------------------------------


def test_signed_activations_warn_for_gradcam_plus_plus_and_xgradcam() -> None:
    model = _tiny_vit(global_pool="avg")
    images = torch.rand(1, 3, 32, 32)
    for method in ("gradcam++", "xgradcam"):
        with pytest.warns(UserWarning, match=f"{method.replace('+', '[+]')} assumes non-negative activations"):
            maps, _ = _maps(model, None, images, method=method)
        assert torch.isfinite(maps).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _maps(TinyCNN().eval(), "relu2", torch.rand(1, 3, 16, 16), method="gradcam++")


def test_a_layer_that_runs_twice_is_refused(images) -> None:
    class Twice(TinyCNN):
        def forward(self, x):
            once = self.relu1(self.conv1(x))
            twice = self.relu1(once * 0.5)
            return self.head(self.relu2(self.conv2(twice)).mean(dim=(-2, -1)))

    with GradCAM(Twice().eval(), "relu1") as cam, pytest.raises(RuntimeError, match="ran 2 times in one forward pass"):
        cam(images, [ClassTarget(0)])


def test_non_finite_maps_raise_instead_of_reporting_a_nan_peak(tiny_cnn, images) -> None:
    with GradCAM(tiny_cnn, "relu2") as cam:
        record = cam.gradients(images, [ClassTarget(0)])
    broken = type(record)(**{**record.__dict__, "activations": record.activations.clone().fill_(float("nan"))})
    with pytest.raises(ValueError, match="contain NaN or infinity"):
        cam.maps(broken)


def test_guided_gradients_reuse_the_layer_gradient_when_no_gate_follows_the_layer(images) -> None:
    """With no activation after the hooked layer, Guided Backprop's image gradient is taken from
    the layer's gradient through the layers before it only; it must equal Captum's."""
    from captum.attr import GuidedBackprop

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    with GradCAM(model, "2") as cam:
        record = cam.gradients(images, [ClassTarget(0), ClassTarget(3)], guided=True)
    for column, target in enumerate((0, 3)):
        reference = GuidedBackprop(model).attribute(images.clone(), target=target)
        torch.testing.assert_close(record.input_gradients[:, column], reference, rtol=1e-5, atol=1e-7)
