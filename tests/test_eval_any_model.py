"""``mmcam eval ... --data FILE.jsonl`` on models nobody here wrote: tiny transformers captioner
(BLIP) and VQA model (ViLT) saved in folders, loaded as ``hf:FOLDER``. Values are checked against
maps computed here through the public ``explain`` API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_fixtures import adapter, image_file, one_thread, saved  # noqa: F401 (autouse fixture)
from mmcam.cli import main
from mmcam.core.localize import localization_box
from mmcam.eval.sanity import explained_model, parameter_layers

CAPTION = "a red circle"


def run_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json", "--quiet"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def write_lines(path: Path, *records: dict | str) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def gradcam_map(family: str, word: int) -> np.ndarray:
    """Grad-CAM of word ``word`` of CAPTION on the test image (H, W), through the public API."""
    explanation = adapter(family).explain(str(image_file()), CAPTION, words=[word], method="gradcam", guided=False, counterfactual=False, contrast=False)
    assert explanation.labels == [CAPTION.split()[word]]
    return explanation.heatmaps[0]


def boxes_at_peak_and_elsewhere(heatmap: np.ndarray) -> tuple[list[int], list[int]]:
    """A 5x5 box around the map's peak, and a 5x5 box around its minimum that holds no maximum."""
    height, width = heatmap.shape

    def around(y: int, x: int) -> list[int]:
        x0, y0 = int(min(max(x - 2, 0), width - 5)), int(min(max(y - 2, 0), height - 5))
        return [x0, y0, x0 + 4, y0 + 4]

    peak = around(*np.unravel_index(heatmap.argmax(), heatmap.shape))
    low = around(*np.unravel_index(heatmap.argmin(), heatmap.shape))
    assert heatmap[low[1] : low[3] + 1, low[0] : low[2] + 1].max() < heatmap.max()  # no maximum in it
    return peak, low


def test_grounding_and_localization_of_a_user_file_on_an_hf_captioner(capsys, tmp_path) -> None:
    """Word 1 ('red'): a box around its Grad-CAM peak scores pointing 1.0, a box elsewhere 0.0;
    energy is the map's share inside the box; a box equal to the map's own 15% box localizes
    with IoU 1."""
    model = f"hf:{saved('blip')}"
    heatmap = gradcam_map("blip", 1)
    peak_box, low_box = boxes_at_peak_and_elsewhere(heatmap)
    for box, pointing in ((peak_box, 1.0), (low_box, 0.0)):
        line = {"image": str(image_file()), "caption": CAPTION, "boxes": [{"index": 1, "word": "red", "box": box}]}
        data = write_lines(tmp_path / "truth.jsonl", line)
        result = run_json(capsys, "grounding", "--model", model, "--data", data, "--methods", "gradcam", "--tolerance", "0")
        scores = result["methods"]["gradcam"]
        inside = heatmap[box[1] : box[3] + 1, box[0] : box[2] + 1].sum() / heatmap.sum()
        assert (result["n"], scores["n"], scores["pointing"]) == (1, 1, pointing)
        assert scores["energy"] == pytest.approx(float(inside), rel=1e-5)
        assert result["methods"]["uniform"]["pointing"] == pytest.approx(25 / heatmap.size)

    own_box = [int(value) for value in localization_box(heatmap)]
    line = {"image": str(image_file()), "caption": CAPTION, "boxes": [{"index": 1, "word": "red", "box": own_box}]}
    result = run_json(capsys, "localization", "--model", model, "--data", write_lines(tmp_path / "own.jsonl", line), "--methods", "gradcam")
    assert result["methods"]["gradcam"]["loc_accuracy"] == 1.0 and result["methods"]["gradcam"]["mean_iou"] == 1.0


def test_vqa_grounding_explains_the_given_answer(capsys, tmp_path) -> None:
    """ViLT: the answer's map is the one ``explain`` gives for that answer; accuracy compares the
    model's prediction with the file's answer."""
    vilt = adapter("vilt")
    question = "what color is it"
    predicted = vilt.explain(str(image_file()), question, method="gradcam", guided=False, counterfactual=False).labels[0]
    other = next(answer for answer in vilt.answers if answer != predicted)
    heatmap = vilt.explain(str(image_file()), question, [other], method="gradcam", guided=False, counterfactual=False).heatmaps[0]
    peak_box, _ = boxes_at_peak_and_elsewhere(heatmap)
    line = {"image": str(image_file()), "question": question, "answer": other, "boxes": [{"word": other, "box": peak_box}]}
    result = run_json(capsys, "grounding", "--model", f"hf:{saved('vilt')}", "--data", write_lines(tmp_path / "vqa.jsonl", line), "--methods", "gradcam", "--tolerance", "0")
    assert result["methods"]["gradcam"]["pointing"] == 1.0
    assert result["methods"]["model"] == {"accuracy": 0.0, "n": 1}


def test_sanity_on_an_hf_captioner_randomises_every_parameter_layer(capsys, tmp_path) -> None:
    """One step per parameter layer of the BLIP model, output end first; the user's model is
    left as it was; once every layer is random the maps are no longer the trained ones."""
    blip = adapter("blip")
    before = {name: value.clone() for name, value in blip.scorer.model.state_dict().items()}
    data = write_lines(tmp_path / "items.jsonl", {"image": str(image_file()), "caption": CAPTION})
    result = run_json(capsys, "sanity", "--model", f"hf:{saved('blip')}", "--data", data, "--methods", "gradcam")
    layers = parameter_layers(explained_model(blip))
    assert layers[0].startswith("text_decoder") and layers[-1].startswith("vision_model")
    assert set(result["methods"]) == {"guided_backprop", "gradcam", "guided_gradcam"}
    for name, scores in result["methods"].items():
        assert scores["layers"] == layers, name
        assert len(scores["randomized_spearman"]) == len(scores["randomized_ssim"]) == len(layers) == 29
        assert all(value is None or -1 <= value <= 1 for value in scores["randomized_spearman"])
        assert all(-1 <= value <= 1 for value in scores["randomized_ssim"])
        assert scores["randomized_ssim"][-1] < 0.9, name
    assert all(torch.equal(before[name], value) for name, value in blip.scorer.model.state_dict().items())


@pytest.mark.parametrize(
    ("family", "line", "targets", "road"),
    [
        ("vilt", {"question": "what color is it"}, 1, True),  # the predicted answer
        ("blip", {"caption": CAPTION}, 3, False),  # every word of the caption
    ],
)
def test_faithfulness_on_hf_models(capsys, tmp_path, family, line, targets, road) -> None:
    """One item: every measure is defined and in its range, averaged over its targets."""
    data = write_lines(tmp_path / "items.jsonl", {"image": str(image_file()), **line})
    options = [] if road else ["--no-road"]
    result = run_json(capsys, "faithfulness", "--model", f"hf:{saved(family)}", "--data", data, "--methods", "gradcam", *options)
    assert set(result["methods"]) == {"guided_backprop", "gradcam", "guided_gradcam", "random"} and result["n"] == 1
    for name, scores in result["methods"].items():
        assert scores["n"] == targets
        for metric in ("deletion_auc", "deletion_mean_auc", "insertion_auc", *(("road_morf", "road_lerf") if road else ())):
            assert 0 <= scores[metric] <= 1, (name, metric)
        for metric in ("occlusion_spearman", "occlusion_blur_spearman"):
            assert -1 <= scores[metric] <= 1 and scores[f"n_undefined_{metric}"] == 0, (name, metric)


def test_every_map_name_is_the_one_explain_gives() -> None:
    """From one guided explanation per method: the method's map, its guided variant and Guided
    Backprop equal what ``explain`` gives for each name (Guided Backprop: the magnitude of the
    explanation's input gradients at the image size)."""
    from mmcam.core.maps import at_size
    from mmcam.eval.any_model import subject_maps, subject_of
    from mmcam.eval.items import DataItem

    blip = adapter("blip")
    subject = subject_of(blip, DataItem(1, str(image_file()), CAPTION))
    maps = subject_maps(blip, subject, ["gradcam", "layercam"])
    assert list(maps) == ["guided_backprop", "gradcam", "guided_gradcam", "layercam", "guided_layercam"]
    for name in ("gradcam", "guided_gradcam", "layercam", "guided_layercam"):
        expected = blip.explain(str(image_file()), CAPTION, method=name, guided=False, counterfactual=False, contrast=False)
        assert maps[name].shape == (3, 40, 56) and np.array_equal(maps[name], expected.heatmaps), name
    guided = blip.explain(str(image_file()), CAPTION, method="gradcam", guided=True, counterfactual=False, contrast=False)
    magnitude = torch.from_numpy(np.abs(guided.guided_gradients).sum(axis=1))
    assert np.array_equal(maps["guided_backprop"], at_size(magnitude, (40, 56)).numpy())
    assert not np.allclose(maps["gradcam"], maps["guided_gradcam"])


def test_faithfulness_scores_are_the_models_own(tmp_path) -> None:
    """The score callable of an hf captioner's word is its teacher-forced log-prob: the
    unperturbed image scores what ``explain`` reports, a black image something else."""
    from mmcam.eval.any_model import subject_of, target_scores
    from mmcam.eval.items import DataItem

    blip = adapter("blip")
    subject = subject_of(blip, DataItem(1, str(image_file()), CAPTION))
    assert subject.labels == tuple(CAPTION.split())
    image = torch.from_numpy(subject.image.pixels).permute(2, 0, 1).double() / 255
    scores, probabilities = target_scores(blip, subject, torch.stack([image, torch.zeros_like(image)]))
    expected = blip.explain(str(image_file()), CAPTION, method="gradcam", guided=False, counterfactual=False, contrast=False)
    assert scores[0].numpy() == pytest.approx(np.asarray(expected.info["logprobs"]), abs=1e-5)
    assert probabilities[0].numpy() == pytest.approx(np.exp(expected.info["logprobs"]), abs=1e-5)
    assert not np.allclose(scores[1].numpy(), scores[0].numpy(), atol=1e-3)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not a JSON object"),
        ({"image": "IMAGE", "caption": CAPTION}, 'no "boxes"'),
        ({"image": "IMAGE", "caption": CAPTION, "boxes": [{"index": 1, "word": "blue", "box": [0, 0, 4, 4]}]}, "word 'blue' is not word 1 of the caption, which is 'red'"),
        ({"image": "IMAGE", "caption": CAPTION, "boxes": [{"index": 3, "word": "red", "box": [0, 0, 4, 4]}]}, "index 3 is past the caption's 3 words"),
        ({"image": "IMAGE", "caption": CAPTION, "boxes": [{"index": 1, "word": "red", "box": [0, 0, 4]}]}, "box must be 4 non-negative integer pixels"),
        ({"image": "IMAGE", "caption": CAPTION, "boxes": [{"index": 1, "word": "red", "box": [0, 0, 99, 4]}]}, "reaches outside the 56x40 image"),
        ({"image": "missing.png", "caption": CAPTION, "boxes": []}, "image not found"),
        ({"image": "IMAGE", "captoin": CAPTION}, "unknown key 'captoin'"),
    ],
)
def test_a_bad_line_is_one_error_naming_it(capsys, tmp_path, line, problem) -> None:
    good = {"image": str(image_file()), "caption": CAPTION, "boxes": [{"index": 2, "word": "circle", "box": [0, 0, 4, 4]}]}
    bad = json.loads(json.dumps(line).replace("IMAGE", str(image_file()))) if isinstance(line, dict) else line
    data = write_lines(tmp_path / "truth.jsonl", good, bad)
    model = f"hf:{saved('blip')}"
    capsys.readouterr()  # building the checkpoint may print
    assert main(["eval", "grounding", "--model", model, "--data", data, "--quiet"]) == 2
    captured = capsys.readouterr()
    (message,) = captured.err.strip().splitlines()
    assert message.startswith(f"mmcam: error: {data}:2: ") and problem in message, message
    assert captured.out == ""
