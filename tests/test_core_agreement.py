"""Agreement with independent implementations: Captum and pytorch-grad-cam on the same layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TinyCNN
from mmcam import ClassTarget, GradCAM, guided_gradcam

captum_attr = pytest.importorskip("captum.attr")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")


@pytest.mark.parametrize("target", [0, 3])
def test_raw_gradcam_matches_captum_layer_gradcam(tiny_cnn, images, target) -> None:
    reference = captum_attr.LayerGradCam(tiny_cnn, tiny_cnn.relu2).attribute(
        images, target=target, relu_attributions=True
    )
    with GradCAM(tiny_cnn, "relu2") as cam:
        ours = cam(images, [ClassTarget(target)], upsample=False, normalize=False)
    assert reference.abs().max() > 0
    torch.testing.assert_close(ours[:, 0], reference[:, 0].detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("method", "peer"),
    [("gradcam", "GradCAM"), ("hirescam", "HiResCAM"), ("gradcam++", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")],
)
def test_methods_match_pytorch_grad_cam(tiny_cnn, images, method, peer) -> None:
    # conv1 keeps the input's 16x16 size, so pytorch-grad-cam's resize is the identity and only
    # its min-max scaling needs reproducing. It adds 1e-6 / 1e-7 to denominators (Grad-CAM++,
    # XGrad-CAM, scaling); a score scaled by 1000 makes those constants negligible, and every
    # map is invariant to the score's scale.
    with getattr(pytorch_grad_cam, peer)(model=tiny_cnn, target_layers=[tiny_cnn.relu1]) as reference_cam:
        reference = reference_cam(images, targets=[lambda logits: 1000 * logits[2]] * len(images))
    with GradCAM(tiny_cnn, "relu1", method=method) as cam:
        raw = cam(images, [lambda logits: 1000 * logits[:, 2]], upsample=False, normalize=False)
    shifted = raw[:, 0].numpy() - raw[:, 0].numpy().min(axis=(1, 2), keepdims=True)
    peak = shifted.max(axis=(1, 2), keepdims=True)
    ours = shifted / np.where(peak > 0, peak, 1.0)
    assert reference.max() > 0.99
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_guided_backprop_matches_captum(images) -> None:
    # Captum overrides nn.ReLU modules only, so compare on the variant without functional ReLU.
    torch.manual_seed(0)
    modules_only = TinyCNN(functional_relu=False).eval()
    reference = captum_attr.GuidedBackprop(modules_only).attribute(images.clone().requires_grad_(), target=1)
    with GradCAM(modules_only, "relu2") as cam:
        record = cam.gradients(images, [ClassTarget(0), ClassTarget(1)], guided=True)
    assert reference.abs().max() > 0
    torch.testing.assert_close(record.input_gradients[:, 1], reference.detach(), rtol=1e-5, atol=1e-8)


def test_functional_relu_is_guided_like_a_module(images) -> None:
    torch.manual_seed(0)
    functional = TinyCNN(functional_relu=True).eval()
    torch.manual_seed(0)
    modules_only = TinyCNN(functional_relu=False).eval()
    with GradCAM(functional, "relu2") as cam:
        ours = cam.gradients(images, [ClassTarget(1)], guided=True).input_gradients
    with GradCAM(modules_only, "relu2") as cam:
        reference = cam.gradients(images, [ClassTarget(1)], guided=True).input_gradients
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


class _GuidedReLU(torch.autograd.Function):
    """Springenberg et al.'s rule by hand: a ReLU whose backward passes only positive gradients
    where its input was positive."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, gradient):
        (x,) = ctx.saved_tensors
        return gradient.clamp(min=0) * (x > 0)


def test_guided_backprop_equals_a_hand_written_guided_relu_not_the_plain_gradient(tiny_cnn, images) -> None:
    # TinyCNN's forward with all three ReLUs (two modules, one functional) replaced by the rule
    x = images.clone().requires_grad_()
    guided_relu = _GuidedReLU.apply
    features = guided_relu(tiny_cnn.conv2(guided_relu(tiny_cnn.conv1(x))))
    logits = tiny_cnn.head(guided_relu(tiny_cnn.mix(features)).mean(dim=(-2, -1)))
    (reference,) = torch.autograd.grad(logits[:, 1].sum(), x)
    plain_input = images.clone().requires_grad_()
    (plain,) = torch.autograd.grad(tiny_cnn(plain_input)[:, 1].sum(), plain_input)
    with GradCAM(tiny_cnn, "relu2") as cam:
        record = cam.gradients(images, [ClassTarget(1)], guided=True)
    torch.testing.assert_close(record.input_gradients[:, 0], reference, rtol=1e-5, atol=1e-8)
    assert (reference - plain).abs().max() > 0.1 * plain.abs().max()  # the rule changes the gradient


def test_guided_gradcam_is_guided_backprop_times_upsampled_map(tiny_cnn, images) -> None:
    targets = [ClassTarget(0), ClassTarget(2)]
    guided = guided_gradcam(tiny_cnn, images, targets, layer="relu2")
    with GradCAM(tiny_cnn, "relu2") as cam:
        record = cam.gradients(images, targets, guided=True)
        maps = cam(images, targets)
    assert guided.shape == (3, 2, 3, 16, 16)
    torch.testing.assert_close(guided, record.input_gradients * maps[:, :, None])


def test_gradcam_plain_path_agrees_with_guided_forward(tiny_cnn, images) -> None:
    targets = [ClassTarget(0), ClassTarget(2)]
    with GradCAM(tiny_cnn, "relu2") as cam:
        plain = cam.gradients(images, targets)
        guided = cam.gradients(images, targets, guided=True)
    torch.testing.assert_close(plain.gradients, guided.gradients)
    torch.testing.assert_close(plain.scores, guided.scores)
