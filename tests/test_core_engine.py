"""The engine: many targets from one pass, chunking, layers, token grids, and a model left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TinyCNN, assert_same_state, model_state
from mmcam import ClassTarget, ContrastTarget, GradCAM, TokenGrid
from mmcam.core import default_layer, resolve_layer
from mmcam.targets import TopClassTarget


def test_several_targets_equal_one_call_per_target(tiny_cnn, images) -> None:
    targets = [ClassTarget(0), ClassTarget(3), ContrastTarget(1, 2), ClassTarget([2, 0, 1])]
    with GradCAM(tiny_cnn, "relu2", method="hirescam") as cam:
        together = cam(images, targets)
        one_by_one = torch.cat([cam(images, [target]) for target in targets], dim=1)
    assert together.shape == (3, 4, 16, 16)
    torch.testing.assert_close(together, one_by_one, rtol=1e-6, atol=1e-7)
    # each target is the one asked for: HiResCAM by hand, ReLU(sum_k dy/dA^k * A^k), before upsampling
    with GradCAM(tiny_cnn, "relu2", method="hirescam") as cam:
        raw = cam(images, targets, upsample=False, normalize=False)
    captured = []
    handle = tiny_cnn.relu2.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = tiny_cnn(images)
    finally:
        handle.remove()
    scores = [logits[:, 0], logits[:, 3], logits[:, 1] - logits[:, 2], logits[[0, 1, 2], [2, 0, 1]]]
    for column, score in enumerate(scores):
        (gradient,) = torch.autograd.grad(score.sum(), captured[0], retain_graph=True)
        torch.testing.assert_close(raw[:, column], torch.relu((gradient * captured[0]).sum(dim=1)).detach(), rtol=1e-5, atol=1e-7)


def test_chunked_gradients_equal_unchunked(tiny_cnn, images) -> None:
    targets = [ClassTarget(index % 4) for index in range(7)]
    with GradCAM(tiny_cnn, "relu2", chunk_size=3) as chunked, GradCAM(tiny_cnn, "relu2", chunk_size=64) as whole:
        torch.testing.assert_close(chunked.gradients(images, targets).gradients, whole.gradients(images, targets).gradients)


def test_only_one_forward_pass_for_many_targets(tiny_cnn, images) -> None:
    calls = []
    handle = tiny_cnn.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with GradCAM(tiny_cnn, "relu2") as cam:
            cam(images, [ClassTarget(index) for index in range(4)])
    finally:
        handle.remove()
    assert len(calls) == 1


def test_per_sample_class_indices_pick_each_samples_logit(tiny_cnn, images) -> None:
    with GradCAM(tiny_cnn, "relu2") as cam:
        mixed = cam.gradients(images, [ClassTarget([2, 0, 1])]).scores[:, 0]
    logits = tiny_cnn(images).detach()
    torch.testing.assert_close(mixed, logits[torch.arange(3), torch.tensor([2, 0, 1])])


def test_top_class_target_explains_the_prediction(tiny_cnn, images) -> None:
    logits = tiny_cnn(images).detach()
    with GradCAM(tiny_cnn, "relu2") as cam:
        top = cam(images, [TopClassTarget()])
        explicit = cam(images, [ClassTarget(logits.argmax(dim=1).tolist())])
    torch.testing.assert_close(top, explicit)


def test_model_is_unchanged_after_explaining(tiny_cnn, images) -> None:
    tiny_cnn.train()
    tiny_cnn.conv1.weight.requires_grad_(False)
    tiny_cnn.head.weight.grad = torch.full_like(tiny_cnn.head.weight, 7.0)
    user_hook = tiny_cnn.relu2.register_forward_hook(lambda *args: None)
    before = model_state(tiny_cnn)
    with GradCAM(tiny_cnn, "relu2") as cam:
        cam(images, [ClassTarget(0), ClassTarget(1)])
        cam.gradients(images, [ClassTarget(2)], guided=True)
    assert_same_state(before, model_state(tiny_cnn))
    user_hook.remove()


def test_model_is_unchanged_when_a_target_raises_midway(tiny_cnn, images) -> None:
    def broken(output):
        raise RuntimeError("target failed")

    before = model_state(tiny_cnn.train())
    for guided in (False, True):
        with pytest.raises(RuntimeError, match="target failed"):
            with GradCAM(tiny_cnn, "relu2") as cam:
                cam.gradients(images, [ClassTarget(0), broken], guided=guided)
    assert_same_state(before, model_state(tiny_cnn))
    # Guided mode is off again: the gradient equals that of a never-explained copy, exactly.
    fresh = TinyCNN().eval()
    fresh.load_state_dict(tiny_cnn.state_dict())
    leaf, fresh_leaf = images.clone().requires_grad_(), images.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(tiny_cnn.eval()(leaf)[:, 1].sum(), leaf)
    (reference,) = torch.autograd.grad(fresh(fresh_leaf)[:, 1].sum(), fresh_leaf)
    assert torch.equal(gradient, reference) and (gradient < 0).any()


def test_explaining_runs_in_eval_mode_and_restores_train_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.9), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).train()
    images = torch.rand(2, 3, 8, 8)
    with GradCAM(model, "2") as cam:
        first, second = cam(images, [ClassTarget(0)]), cam(images, [ClassTarget(0)])
    torch.testing.assert_close(first, second)
    assert all(module.training for module in model.modules())


def test_frozen_model_still_gets_maps(tiny_cnn, images) -> None:
    with GradCAM(tiny_cnn, "relu2") as cam:
        unfrozen = cam(images, [ClassTarget(3), ClassTarget(1)])
    for parameter in tiny_cnn.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad(), GradCAM(tiny_cnn, "relu2") as cam:
        maps = cam(images, [ClassTarget(3), ClassTarget(1)])
    assert unfrozen.amax() > 0
    torch.testing.assert_close(maps, unfrozen, rtol=0, atol=1e-6)
    assert all(not parameter.requires_grad for parameter in tiny_cnn.parameters())


def test_inputs_as_tuple_and_dict_reach_the_model() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.scale = nn.Linear(2, 4)

        def forward(self, image, extra):
            features = torch.relu(self.conv(image))
            return (features.mean(dim=(-2, -1)) * self.scale(extra))

    torch.manual_seed(0)
    model, image, extra = TwoInputs(), torch.rand(2, 3, 6, 6), torch.rand(2, 2)
    with GradCAM(model, "conv") as cam:
        as_tuple = cam((image, extra), [ClassTarget(1)])
        as_dict = cam({"image": image, "extra": extra}, [ClassTarget(1)])
    assert as_tuple.shape == (2, 1, 6, 6)
    torch.testing.assert_close(as_tuple, as_dict)


def test_bad_targets_give_clear_errors(tiny_cnn, images) -> None:
    with GradCAM(tiny_cnn, "relu2") as cam:
        with pytest.raises(ValueError, match="no targets"):
            cam(images, [])
        with pytest.raises(ValueError, match=r"one scalar per sample, shape \(3,\)"):
            cam(images, [lambda output: output])
        with pytest.raises(ValueError, match="non-finite"):
            cam(images, [lambda output: output[:, 0] * float("nan")])
        with pytest.raises(ValueError, match="does not depend on layer .relu2. through autograd"):
            cam(images, [lambda output: torch.ones(3)])
        with pytest.raises(ValueError, match="2 class indices given for a batch of 3"):
            cam(images, [ClassTarget([0, 1])])


def test_layer_lookup_and_errors(tiny_cnn) -> None:
    assert resolve_layer(tiny_cnn, "conv2")[1] is tiny_cnn.conv2
    assert resolve_layer(tiny_cnn, tiny_cnn.relu1)[0] == "relu1"
    sequential = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
    assert resolve_layer(sequential, "1.-1")[1] is sequential[1][1]
    with pytest.raises(ValueError, match=r"unknown layer 'conv3'; candidates: (conv1, conv2|conv2, conv1)"):
        resolve_layer(tiny_cnn, "conv3")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(tiny_cnn, nn.ReLU())
    with pytest.raises(ValueError, match="no Conv2d"):
        default_layer(nn.Sequential(nn.Linear(2, 2)))


def test_default_layer_is_the_last_conv_stage() -> None:
    import torchvision

    assert default_layer(torchvision.models.resnet18())[0] == "layer4"
    assert default_layer(torchvision.models.vgg11())[0] == "features.19"
    assert default_layer(TinyCNN())[0] == "mix"


def test_token_grid_matches_the_equivalent_conv_layout() -> None:
    torch.manual_seed(0)
    head = nn.Linear(5, 2)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Identity()

        def forward(self, image):
            tokens = image.flatten(2).transpose(1, 2)  # (N, h*w, C)
            cls = tokens.mean(dim=1, keepdim=True)
            hidden = self.encoder(torch.cat([cls, tokens], dim=1))
            return head(torch.relu(hidden[:, 1:]).mean(dim=1) + hidden[:, 0])

    class Grid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Identity()

        def forward(self, image):
            cls = image.flatten(2).mean(dim=2)  # the CLS token's value, not through the layer
            tokens = self.encoder(image).flatten(2).transpose(1, 2)
            return head(torch.relu(tokens).mean(dim=1) + cls)

    image = torch.randn(2, 5, 3, 4)
    with GradCAM(Tokens(), "encoder", reshape=TokenGrid(drop=1, grid=(3, 4)), method="hirescam") as cam:
        from_tokens = cam(image, [ClassTarget(1)], upsample=False, normalize=False)
    with GradCAM(Grid(), "encoder", method="hirescam") as cam:
        from_grid = cam(image, [ClassTarget(1)], upsample=False, normalize=False)
    # The dropped CLS token carries gradient too; the grid maps ignore it, as the reshape does.
    assert from_tokens.shape == (2, 1, 3, 4)
    torch.testing.assert_close(from_tokens, from_grid, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="do not fill a 3x3 grid"):
        TokenGrid(drop=1, grid=(3, 3))(torch.zeros(1, 13, 5))
    # Without a reshape the layout is read from the shape: 13 tokens of a 3x4 image = 1 + 3x4.
    with GradCAM(Tokens(), "encoder", method="hirescam") as cam:
        record = cam.gradients(image, [ClassTarget(1)])
        inferred = cam.maps(record, upsample=False, normalize=False)
    assert record.layout == "tokens 3x4 after 1 prefix token"
    torch.testing.assert_close(inferred, from_tokens)


def test_graph_from_layer_gives_the_same_maps_as_the_full_graph(tiny_cnn, images) -> None:
    targets = [ClassTarget(0), ClassTarget(3)]
    with GradCAM(tiny_cnn, "relu2") as pruned, GradCAM(tiny_cnn, "relu2", graph_from_layer=False) as full:
        torch.testing.assert_close(pruned.gradients(images, targets).gradients, full.gradients(images, targets).gradients)
    assert torch.is_grad_enabled()
    with torch.no_grad(), GradCAM(tiny_cnn, "relu2") as cam:
        cam(images, targets)
        assert not torch.is_grad_enabled()
