"""``hf:`` checkpoints loaded with a dtype or a ``device_map``: a model dispatched by accelerate
(parts offloaded to disk, their weights on the meta device between calls, hooks moving inputs
and weights) explains exactly as the plain model does, and is unchanged afterwards. Several
GPUs are not at hand here; disk offload runs the same dispatch hooks on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from hf_fixtures import one_thread  # noqa: F401 (autouse fixture)
from mmcam.cli import main
from mmcam.errors import InputError
from vlm_fixtures import llava_image, saved_llava
from vlm_instructblip_fixtures import saved_instructblip
from vlm_qwen_fixtures import saved_qwen

pytest.importorskip("accelerate")

CAPTION = "a red circle and a blue square"
LANGUAGE_ON_DISK = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "model.language_model": "disk", "lm_head": "cpu"}
VISION_ON_DISK = {"model.vision_tower": "disk", "model.multi_modal_projector": "disk", "model.language_model": "cpu", "lm_head": "disk"}


def _image(shape: str = "wide") -> np.ndarray:
    return np.array(Image.open(llava_image(shape)).convert("RGB"))


def _dispatch_state(model) -> tuple:
    """What a dispatched model is made of: parameters on meta (offloaded), accelerate's hooks,
    torch hooks, training mode and requires_grad."""
    return (
        sorted(name for name, parameter in model.named_parameters() if parameter.device.type == "meta"),
        sorted(name for name, module in model.named_modules() if hasattr(module, "_hf_hook")),
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        model.training,
        [parameter.requires_grad for parameter in model.parameters()],
    )


def _assert_same(explained, expected) -> None:
    np.testing.assert_allclose(explained.grid_maps, expected.grid_maps, atol=1e-6)
    np.testing.assert_allclose(explained.scores, expected.scores, atol=1e-6)
    assert explained.labels == expected.labels


@pytest.mark.parametrize("device_map", [LANGUAGE_ON_DISK, VISION_ON_DISK], ids=["language-on-disk", "vision-on-disk"])
def test_a_llava_dispatched_with_offload_explains_as_the_plain_model(device_map, tmp_path) -> None:
    folder, image = saved_llava(), _image()
    expected = mmcam.load(f"hf:{folder}").explain(image, CAPTION, guided=True)
    dispatched = mmcam.load(f"hf:{folder}", device_map=device_map, offload_folder=tmp_path)
    model = dispatched.scorer.model
    assert model.hf_device_map == device_map
    _assert_same(dispatched.explain(image, CAPTION, guided=True), expected)
    # (transformers installs its output-capturing hooks on a model's first forward, for good)
    before = _dispatch_state(model)
    assert before[0] and before[1]  # some weights really wait on meta; accelerate's hooks are there
    explained = dispatched.explain(image, CAPTION, guided=True)
    _assert_same(explained, expected)
    np.testing.assert_allclose(explained.guided_gradients, expected.guided_gradients, atol=1e-6)
    assert _dispatch_state(model) == before


def test_a_dispatched_llava_answers_as_the_plain_model(tmp_path) -> None:
    folder, image = saved_llava(), _image("tall")
    question, answers = "what color is the circle?", ["red", "blue square"]
    expected = mmcam.load(f"hf:{folder}?task=vqa").explain(image, question, answers=answers)
    dispatched = mmcam.load(f"hf:{folder}?task=vqa", device_map=VISION_ON_DISK, offload_folder=tmp_path)
    _assert_same(dispatched.explain(image, question, answers=answers), expected)


def test_a_qwen2_vl_with_its_language_model_on_disk_explains_as_the_plain_model(tmp_path) -> None:
    folder, image = saved_qwen(), _image("tall")
    expected = mmcam.load(f"hf:{folder}").explain(image, CAPTION)
    device_map = {"model.visual": "cpu", "model.language_model": "disk", "lm_head": "cpu"}
    dispatched = mmcam.load(f"hf:{folder}", device_map=device_map, offload_folder=tmp_path)
    _assert_same(dispatched.explain(image, CAPTION), expected)
    before = _dispatch_state(dispatched.scorer.model)
    assert before[0] and before[1]
    _assert_same(dispatched.explain(image, CAPTION), expected)
    assert _dispatch_state(dispatched.scorer.model) == before


@pytest.mark.parametrize("language", ["llama", "t5"])
def test_instructblip_answers_with_its_language_model_on_disk(language, tmp_path) -> None:
    # the answers are scored from embeddings made outside the language model's forward: they
    # must go where its (offloaded) embedding runs, not to the meta device its weights wait on
    folder, image = saved_instructblip(language), _image("tall")
    question, answers = "what color is the circle?", ["red", "blue square"]
    expected = mmcam.load(f"hf:{folder}?task=vqa").explain(image, question, answers=answers)
    device_map = {"vision_model": "cpu", "qformer": "cpu", "language_projection": "cpu", "language_model": "disk", "query_tokens": "cpu"}
    dispatched = mmcam.load(f"hf:{folder}?task=vqa", device_map=device_map, offload_folder=tmp_path)
    _assert_same(dispatched.explain(image, question, answers=answers), expected)


def test_dtype_by_keyword_or_query_loads_the_weights_in_it() -> None:
    folder, image = saved_llava(), _image()
    by_keyword = mmcam.load(f"hf:{folder}", dtype="bfloat16")
    by_query = mmcam.load(f"hf:{folder}?dtype=bf16")
    full = mmcam.load(f"hf:{folder}")
    expected = full.explain(image, CAPTION, contrast=False)
    cast = {name: parameter.to(torch.bfloat16) for name, parameter in full.scorer.model.named_parameters()}
    for adapter in (by_keyword, by_query):
        model = adapter.scorer.model
        assert all(torch.equal(parameter, cast[name]) for name, parameter in model.named_parameters())
        # transformers keeps the rotary frequencies in float32 (a model cast after loading has them in bf16)
        assert model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
        explained = adapter.explain(image, CAPTION, contrast=False)
        assert explained.grid_maps.dtype == np.float32 and np.isfinite(explained.grid_maps).all()
        # bf16 arithmetic: about 3 significant digits of the float32 model's scores and maps
        np.testing.assert_allclose(explained.scores, expected.scores, rtol=1e-2)
        np.testing.assert_allclose(explained.grid_maps, expected.grid_maps, atol=5e-2 * expected.grid_maps.max())


def test_bad_loading_options_are_one_line_errors(monkeypatch) -> None:
    folder = saved_llava()
    with pytest.raises(InputError, match=r"unknown dtype 'float8'; choose one of: float32, fp32, bfloat16"):
        mmcam.load(f"hf:{folder}?dtype=float8")
    with pytest.raises(InputError, match=r"the options are task=caption\|vqa, dtype=, device_map=, offload_folder="):
        mmcam.load(f"hf:{folder}?devicemap=auto")
    with pytest.raises(InputError, match=r"device_map: options of hf: checkpoints only, not of 'shapes-captioner'"):
        mmcam.load("shapes-captioner", device_map="auto")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match=r"^cannot load the model in .*: .*NVIDIA"):
            mmcam.load(f"hf:{folder}?device_map=cuda:0")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "accelerate" else real(name, *rest))
    with pytest.raises(InputError, match=r"^device_map needs the accelerate package: pip install accelerate$"):
        mmcam.load(f"hf:{folder}", device_map="auto")


def test_cli_takes_the_loading_options_in_the_model_spec(capsys) -> None:
    folder, image = saved_llava(), llava_image("wide")
    assert main(["caption", str(image), "--model", f"hf:{folder}?dtype=bfloat16", "--caption", "a red circle", "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert record["model"] == f"hf:{folder}"
    assert [word["word"] for word in record["words"]] == ["a", "red", "circle"]
    assert main(["caption", str(image), "--model", f"hf:{folder}?dtype=int3", "--caption", "a red circle"]) == 2
    assert "unknown dtype 'int3'" in capsys.readouterr().err
