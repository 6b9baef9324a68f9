"""The real EfficientNet-Lite0 on real photos, through the Python API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mmcam
from mmcam.cli import main
from mmcam.io import InputError

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
TABBY = 281
# Hand-drawn object boxes (x0, y0, x1, y1) in the original photos, read off the photos (not the maps).
CAT_FACE_BOX = (120, 60, 375, 275)   # chelsea, 451x300: the cat's face, from the left eye's outer
                                     # corner to the right cheek, brow to chin (41% of the photo)
CUP_BOX = (150, 0, 450, 260)         # coffee: the cup and the coffee in it, 600x400


@pytest.fixture(scope="module")
def classifier():
    return mmcam.load("efficientnet_lite0")


def _inside(box, xy) -> bool:
    return box[0] <= xy[0] <= box[2] and box[1] <= xy[1] <= box[3]


def _box_mask(shape: tuple[int, int], box) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[box[1] : box[3] + 1, box[0] : box[2] + 1] = True
    return mask


def _mean_inside_over_outside(heatmap: np.ndarray, box) -> float:
    mask = _box_mask(heatmap.shape, box)
    return float(heatmap[mask].mean() / heatmap[~mask].mean())


def _energy_inside(heatmap: np.ndarray, box) -> float:
    return float(heatmap[_box_mask(heatmap.shape, box)].sum() / heatmap.sum())


def test_real_photos_are_classified_and_maps_peak_on_the_object(classifier) -> None:
    cat, coffee = classifier.explain_batch([skimage_data.chelsea(), skimage_data.coffee()])
    assert cat.indices[0] in CAT_CLASSES
    assert coffee.indices[0] == ESPRESSO
    assert cat.heatmaps.shape == (1, 300, 451) and coffee.heatmaps.shape == (1, 400, 600)
    assert _box_mask((300, 451), CAT_FACE_BOX).mean() < 0.45
    assert _inside(CAT_FACE_BOX, cat.peak_xy(0))
    assert _energy_inside(cat.heatmaps[0], CAT_FACE_BOX) > 0.6  # 0.73 measured, on 41% of the photo
    assert _inside(CUP_BOX, coffee.peak_xy(0))
    assert _mean_inside_over_outside(coffee.heatmaps[0], CUP_BOX) > 1.5
    assert cat.guided.shape == (1, 300, 451, 3)


def test_each_class_asked_gets_its_own_logit_and_map(classifier) -> None:
    photo = skimage_data.coffee()
    explanation = classifier.explain(photo, ["espresso", "tabby"])
    assert explanation.labels == ["espresso", "tabby"]
    with torch.no_grad():
        logits = classifier.model(classifier.preprocess([photo]))[0]
    np.testing.assert_allclose(explanation.scores, logits[[ESPRESSO, TABBY]].numpy(), rtol=1e-5, atol=1e-5)
    for k, label in enumerate(["espresso", "tabby"]):  # each map is its class's alone, from the shared pass
        alone = classifier.explain(photo, [label], guided=False)
        np.testing.assert_allclose(explanation.heatmaps[k], alone.heatmaps[0], atol=1e-5)
    assert _inside(CUP_BOX, explanation.peak_xy(0))


def test_labels_match_case_insensitively_and_unknown_labels_suggest(classifier) -> None:
    assert classifier.class_index("ESPRESSO") == ESPRESSO
    assert classifier.class_index("967") == ESPRESSO
    with pytest.raises(InputError, match="unknown label 'espreso'; closest labels: 'espresso'"):
        classifier.class_index("espreso")
    with pytest.raises(InputError, match="out of range"):
        classifier.class_index(1000)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcam", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_classify_json_contract(tmp_path) -> None:
    from PIL import Image

    image = tmp_path / "coffee.png"
    Image.fromarray(skimage_data.coffee()).save(image)
    out = tmp_path / "out"
    result = run_cli("classify", str(image), "--json", "--out", str(out), "--target", "espresso", "--target", "Tabby")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    record = json.loads(line)
    assert set(record) == {"image", "model", "layer", "method", "predictions", "explanations", "guided_backprop"}
    assert record["image"] == str(image) and record["model"] == "efficientnet_lite0"
    assert record["layer"] == "bn2" and record["method"] == "gradcam"
    assert len(record["predictions"]) == 5 and record["predictions"][0]["index"] == ESPRESSO
    assert set(record["predictions"][0]) == {"label", "index", "probability"}
    first, second = record["explanations"]
    assert set(first) == {"target", "index", "score", "peak_xy", "bbox", "heatmap"}
    assert (first["target"], first["index"], second["target"]) == ("espresso", ESPRESSO, "tabby")
    heatmap = np.load(first["heatmap"])
    assert heatmap.dtype == np.float32 and heatmap.shape == (400, 600)
    assert heatmap.min() >= 0 and heatmap.max() == 1.0
    x, y = first["peak_xy"]
    assert heatmap[y, x] == 1.0
    x0, y0, x1, y1 = first["bbox"]
    assert 0 <= x0 <= x <= x1 < 600 and 0 <= y0 <= y <= y1 < 400
    written = sorted(path.name for path in out.iterdir())
    assert "coffee_00_espresso_overlay.png" in written and "coffee_00_espresso_guided.png" in written


def test_cli_classify_top_prediction_without_out(capsys) -> None:
    assert main(["classify", str(mmcam.demo.sample_path("chelsea.jpg")), "--json", "--method", "hirescam"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "hirescam"
    assert record["explanations"][0]["index"] == record["predictions"][0]["index"]
    assert record["explanations"][0]["heatmap"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "missing.png"], "image not found: missing.png"),
        (["classify", "{sample}", "--target", "espreso"], "unknown label 'espreso'"),
        (["classify", "{sample}", "--model", "no-such-model"], "unknown model 'no-such-model'; available: "),
        (["classify", "{sample}", "--layer", "blocks.99"], "unknown layer 'blocks.99'"),
        (["classify", "{sample}", "--out", "{file}"], "is a file; give a directory"),
        (["classify", "{text}"], "is not a readable image"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, args, message) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    afile = tmp_path / "afile"
    afile.write_text("x")
    sample = str(mmcam.demo.sample_path("chelsea.jpg"))
    args = [arg.format(sample=sample, file=afile, text=text) for arg in args]
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("mmcam: error: ") and message in stderr


def test_cli_error_in_a_real_process_has_no_traceback() -> None:
    result = run_cli("classify", "missing.png", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "mmcam: error: image not found: missing.png\n"
