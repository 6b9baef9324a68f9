"""The viewer's Python side: what a run's output becomes in the page (maps within quantisation,
words and paths exactly, whatever characters they hold), Parquet outputs in issue 13's
schema, ground-truth pointing, the colour table, and the CLI's errors. The browser tests in
test_viewer_browser.py reuse the outputs built here."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from mmcam.cli import main
from mmcam.explanation import Explanation
from mmcam.io import InputError, LoadedImage
from mmcam.records import caption_record, vqa_record
from mmcam.viewer import PackOptions, Viewer, read_output, write_explanations, write_viewer
from mmcam.viewer.colormap import lookup_table
from mmcam.viewer.pack import pack_item, peak_strength, unpack_map
from mmcam.viewer.page import script_json
from mmcam.viz.overlay import overlay

ODD_WORD = "</script><script>alert('x')</script>"
ODD_WORDS = ["a", "red", ODD_WORD, 'ünï "cødé" \u2028 <!-- &amp;']


def gaussian(size: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    """A [0, 1] Gaussian bump (H, W) peaking at ``centre`` = (x, y)."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    bump = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return (bump / bump.max()).astype(np.float32)


def corners(size: tuple[int, int], count: int) -> list[tuple[float, float]]:
    """``count`` well separated (x, y) centres: the corners of the image, then its centre."""
    height, width = size
    spots = [(0.2, 0.2), (0.8, 0.75), (0.8, 0.2), (0.2, 0.8), (0.5, 0.5)]
    return [(fx * (width - 1), fy * (height - 1)) for fx, fy in spots[:count]]


def toy_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.full((*size, 3), 235, np.uint8)
    pixels[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = rng.integers(0, 255, 3)
    return pixels


def caption_explanation(image: Path, labels: list[str], size: tuple[int, int] = (48, 64), logprobs: list[float] | None = None) -> Explanation:
    """A captioning explanation with one Gaussian map per word at a different place, every
    optional map (counterfactual, attention, Guided, runner-up contrasts) present."""
    pixels = np.asarray(Image.open(image).convert("RGB"))
    count = len(labels)
    heatmaps = np.stack([gaussian(size, centre, 5.0) for centre in corners(size, count)])
    logprobs = logprobs if logprobs is not None else [-0.1 * (t + 1) for t in range(count)]
    rng = np.random.default_rng(1)
    guided = np.stack([np.stack([heatmap, 1 - heatmap, heatmap**2]) for heatmap in heatmaps])
    guided = guided + rng.normal(scale=0.01, size=(count, 3, *size)).astype(np.float32)
    return Explanation(
        kind="caption",
        image=LoadedImage(pixels, str(image)),
        model="toy-captioner",
        layer="encoder.block",
        method="gradcam",
        labels=list(labels),
        indices=list(range(count)),
        scores=np.asarray(logprobs, np.float32),
        grid_maps=heatmaps,
        guided_gradients=guided,  # (T, 3, H, W)
        counterfactual_maps=np.stack([gaussian(size, (size[1] / 2, size[0] / 2), 8.0 + t) for t in range(count)]),
        attention_maps=heatmaps[::-1].copy(),
        contrast_maps=heatmaps[:, ::-1].copy(),
        contrast_labels=[f"{t:02d}-{label}-vs-runner-up" for t, label in enumerate(labels)],
        info={"caption": " ".join(labels), "logprobs": list(logprobs), "title": image.stem},
    )


def vqa_explanation(image: Path, size: tuple[int, int] = (40, 40)) -> Explanation:
    pixels = np.asarray(Image.open(image).convert("RGB"))
    answers = ["red", "blue"]
    return Explanation(
        kind="vqa",
        image=LoadedImage(pixels, str(image)),
        model="toy-vqa",
        layer="features",
        method="gradcam",
        labels=answers,
        indices=[0, 1],
        scores=np.asarray([4.0, 1.5], np.float32),
        grid_maps=np.stack([gaussian(size, centre, 4.0) for centre in corners(size, 2)]),
        contrast_maps=np.stack([gaussian(size, (20, 20), 3.0)]),
        contrast_labels=["red-vs-blue"],
        info={
            "question": "what <color> is it?",
            "answer": "red",
            "probability": 0.9,
            "probabilities": [0.9, 0.07],
            "top": [{"answer": "red", "probability": 0.9}, {"answer": "blue", "probability": 0.07}],
            "question_words": ["what", "<color>", "is", "it"],
            "word_attributions": [[0.5, -1.0, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]],
            "title": "what <color> is it?",
        },
    )


def write_caption_output(out: Path, captions: dict[str, list[str]], size: tuple[int, int] = (48, 64), logprobs: dict[str, list[float]] | None = None) -> dict[str, Explanation]:
    """A batch run's output as ``mmcam caption --batch ... --out OUT`` writes it: per item the
    files of ``Explanation.save`` and a ``STEM.json`` record; images beside ``out``. The strip
    figures (matplotlib, a second per item, never read by the viewer) are left out."""
    out.mkdir(parents=True, exist_ok=True)
    explanations = {}
    for n, (stem, labels) in enumerate(captions.items()):
        image = out.parent / f"{stem}.png"
        Image.fromarray(toy_image(size, n)).save(image)
        explanation = caption_explanation(image, labels, size, (logprobs or {}).get(stem))
        with mock.patch("mmcam.explanation._save_figure"):
            written = explanation.save(out, stem)
        record = caption_record(explanation, str(image), written)
        (out / f"{stem}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
        explanations[stem] = explanation
    return explanations


def write_vqa_output(out: Path) -> Explanation:
    out.mkdir(parents=True, exist_ok=True)
    image = out.parent / "shape.png"
    Image.fromarray(toy_image((40, 40), 3)).save(image)
    explanation = vqa_explanation(image)
    with mock.patch("mmcam.explanation._save_figure"):
        record = vqa_record(explanation, str(image), explanation.save(out, "shape"))
    (out / "shape.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    return explanation


class _Blocks(HTMLParser):
    """The text of every <script> element, split as a browser's tokenizer splits it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_data(self, data):
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None


def page_data(path: Path) -> tuple[list[dict], list[dict], dict]:
    """(item payloads, index entries, config) as the page's script reads them."""
    parser = _Blocks()
    parser.feed(path.read_text(encoding="utf-8"))
    payloads, index, config = {}, [], {}
    for attrs, text in parser.scripts:
        if "data-mmcam-item" in attrs:
            payloads[int(attrs["data-mmcam-item"])] = json.loads(text)
        elif attrs.get("data-mmcam") == "index":
            index = json.loads(text)
        elif attrs.get("data-mmcam") == "config":
            config = json.loads(text)
    return [payloads[n] for n in sorted(payloads)], index, config


# ---------------------------------------------------------------- embedding round trip


def test_embedded_maps_decode_to_the_saved_npy_within_quantisation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_caption_output(out, {"scene": ["a", "red", "circle"]})
    path = write_viewer(out)
    assert path == out / "viewer.html"
    (payload,), (entry,), _ = page_data(path)
    assert [target["label"] for target in payload["targets"]] == ["a", "red", "circle"]
    for t, label in enumerate(["a", "red", "circle"]):
        base = out / f"scene_{t:02d}_{label}"
        for kind, suffix in (("heatmap", ""), ("counterfactual", "_counterfactual"), ("attention", "_attention")):
            saved = np.load(f"{base}{suffix}.npy")
            decoded = unpack_map(payload, t, kind).astype(np.float64) / 255
            assert decoded.shape == saved.shape == (48, 64)
            assert np.abs(decoded - saved).max() <= 0.5 / 255 + 1e-6
        contrast = np.load(out / f"scene_contrast_{t:02d}-{label}-vs-runner-up.npy")
        assert np.abs(unpack_map(payload, t, "contrast") / 255 - contrast).max() <= 0.5 / 255 + 1e-6
        guided = np.asarray(Image.open(f"{base}_guided.png").convert("RGB"))
        assert payload["targets"][t]["guided"].startswith("data:image/")
        assert guided.shape == (48, 64, 3)
    assert payload["width"] == 64 and payload["height"] == 48
    assert entry["minLogprob"] == pytest.approx(-0.3) and entry["minWord"] == "circle"


def test_maps_larger_than_map_side_are_area_averaged(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_caption_output(out, {"big": ["a", "dog"]}, size=(64, 96))
    (payload,), _, _ = page_data(write_viewer(out, options=PackOptions(map_side=48)))
    saved = np.load(out / "big_01_dog.npy")
    blocks = saved.reshape(32, 2, 48, 2).mean(axis=(1, 3))  # the 2x2 block means, independently
    decoded = unpack_map(payload, 1).astype(np.float64) / 255
    assert decoded.shape == (32, 48)
    assert np.abs(decoded - blocks).max() <= 0.5 / 255 + 1e-5


def test_peak_strength_and_the_weakest_map_of_an_item() -> None:
    assert peak_strength(np.array([[0.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.75)
    assert peak_strength(np.full((3, 3), 0.4)) == pytest.approx(0.0)
    assert peak_strength(np.zeros((3, 3))) == 0.0


def test_vqa_output_keeps_question_answers_and_the_contrast_as_an_extra_target(tmp_path: Path) -> None:
    out = tmp_path / "vqa"
    write_vqa_output(out)
    (payload,), (entry,), _ = page_data(write_viewer(out))
    assert payload["kind"] == "vqa" and payload["text"] == "what <color> is it?" and payload["answer"] == "red"
    assert payload["question"] == ["what", "<color>", "is", "it"]
    labels = [(target["label"], target["extra"]) for target in payload["targets"]]
    assert labels == [("red", False), ("blue", False), ("red vs blue", True)]
    # the record keeps the first answer's question-word attributions; red helps, blue hurts
    first = payload["targets"][0]
    assert first["attributions"] == [0.5, -1.0, 0.25, 0.0]
    colours = first["attributionColours"]
    assert int(colours[0][1:3], 16) > int(colours[0][5:7], 16) and int(colours[1][1:3], 16) < int(colours[1][5:7], 16)
    assert payload["targets"][0]["logprob"] == pytest.approx(math.log(0.9), abs=1e-6)
    assert entry["minLogprob"] == pytest.approx(math.log(0.9), abs=1e-5)  # the first answer's, not the runner-up's


# ---------------------------------------------------------------- escaping


def test_odd_characters_in_words_and_paths_survive_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "runs <b> 'q' \"dq\" ü"
    out = folder / "out & <script>"
    write_caption_output(out, {"weird <i>&'\"ü<script>": ODD_WORDS})
    path = write_viewer(out)
    text = path.read_text(encoding="utf-8")
    (payload,), (entry,), config = page_data(path)
    assert [target["label"] for target in payload["targets"]] == ODD_WORDS
    assert payload["text"] == " ".join(ODD_WORDS) == entry["text"]
    assert payload["name"] == "weird <i>&'\"ü<script>" == entry["name"]
    assert config["title"].endswith("out & <script>") and payload["source"].endswith("ü<script>.png")
    # four script elements end where they should: one per item, index, config, the viewer
    assert text.lower().count("</script") == 4
    assert "alert(" in text and "<script>alert" not in text
    assert "out &amp; &lt;script&gt;</title>" in text


def test_script_json_escapes_what_could_end_a_script_element() -> None:
    value = {"w": "</script><!-- \u2028 & >"}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_repr_html_renders_a_self_contained_item_view_with_unique_ids(tmp_path: Path) -> None:
    image = tmp_path / "im.png"
    Image.fromarray(toy_image((48, 64))).save(image)
    explanation = caption_explanation(image, ODD_WORDS)
    first, second = explanation._repr_html_(), explanation._repr_html_()
    ids = [fragment.split("id='", 1)[1].split("'", 1)[0] for fragment in (first, second)]
    assert ids[0] != ids[1] and all(name.startswith("mmcam-") for name in ids)
    parser = _Blocks()
    parser.feed(first)
    payloads = [json.loads(text) for attrs, text in parser.scripts if "data-mmcam-item" in attrs]
    assert [target["label"] for target in payloads[0]["targets"]] == ODD_WORDS
    assert "http:" not in first and "https:" not in first  # nothing is loaded from outside
    assert "<style>" in first and first.lower().count("</script") == 3


# ---------------------------------------------------------------- the colour table


def test_lookup_table_reproduces_the_png_overlay_colours() -> None:
    levels = np.arange(256, dtype=np.float64).reshape(16, 16) / 255
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    table = lookup_table()
    page = np.round(0.5 * pixels + 0.5 * table[np.arange(256).reshape(16, 16)])
    assert np.abs(page - overlay(pixels, levels)).max() <= 0.5 + 1e-9  # rounding of .5 ties only
    assert np.mean(page == overlay(pixels, levels)) > 0.99


# ---------------------------------------------------------------- Parquet (issue 13's schema)


def write_parquet_output(out: Path, image: Path | None) -> dict[int, list[np.ndarray]]:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (out / "parts").mkdir(parents=True)
    rng = np.random.default_rng(3)
    grids = {0: [rng.random((4, 6)) * 7 for _ in range(3)], 2: [rng.random((4, 6)) * 3]}
    rows = []
    for item, maps in grids.items():
        for index, grid in enumerate(maps):
            rows.append({
                "item": item, "image": str(image) if image else "gone.png", "text": "a red <b>circle</b>", "answer": None,
                "target": ["a", "red", "circle"][index], "target_index": index, "score": -0.5 * (index + item + 1),
                "peak_x": 3, "peak_y": 2, "bbox": [1, 1, 5, 4], "grid_h": 4, "grid_w": 6,
                "map": grid.ravel().tolist(), "method": "gradcam", "layer": "encoder", "model": "toy", "error": None,
            })
    rows.reverse()  # parts need not be sorted
    failed = {key: None for key in rows[0]} | {"item": 1, "image": "bad.png", "error": "cannot read bad.png"}
    schema = pa.schema([
        ("item", pa.int64()), ("image", pa.string()), ("text", pa.string()), ("answer", pa.string()), ("target", pa.string()),
        ("target_index", pa.int64()), ("score", pa.float64()), ("peak_x", pa.int64()), ("peak_y", pa.int64()),
        ("bbox", pa.list_(pa.int64())), ("grid_h", pa.int64()), ("grid_w", pa.int64()), ("map", pa.list_(pa.float32())),
        ("method", pa.string()), ("layer", pa.string()), ("model", pa.string()), ("error", pa.string()),
    ])
    pq.write_table(pa.Table.from_pylist(rows[:2], schema=schema), out / "parts" / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist([*rows[2:], failed], schema=schema), out / "parts" / "part-00001.parquet")
    manifest = {"model": "toy", "method": "gradcam", "layer": "encoder", "settings": {}, "items": 3,
                "parts": ["parts/part-00000.parquet", "parts/part-00001.parquet"]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return grids


def test_parquet_output_is_read_by_item_and_target_index(tmp_path: Path) -> None:
    image = tmp_path / "im.png"
    Image.fromarray(toy_image((32, 48))).save(image)
    grids = write_parquet_output(tmp_path / "pq", image)
    run = read_output(tmp_path / "pq")
    items = list(run.items)
    assert run.count == 3 and run.meta["format"] == "parquet"
    assert [item.error for item in items] == [None, "cannot read bad.png", None]
    first = items[0]
    assert first.kind == "caption" and first.text == "a red <b>circle</b>" and first.size == (32, 48)
    assert [target.label for target in first.targets] == ["a", "red", "circle"]
    assert [target.logprob for target in first.targets] == [-0.5, -1.0, -1.5]  # a caption row's score is its log p
    for target, grid in zip(first.targets, grids[0], strict=True):
        assert np.allclose(target.maps["heatmap"], grid / grid.max(), atol=1e-6)  # native grid, scaled by its max
        assert target.peak_xy == (3, 2) and target.bbox == (1, 1, 5, 4)


def test_parquet_viewer_embeds_native_grid_maps(tmp_path: Path) -> None:
    grids = write_parquet_output(tmp_path / "pq", None)
    payloads, entries, config = page_data(write_viewer(tmp_path / "pq"))
    assert [entry["error"] for entry in entries] == [None, "cannot read bad.png", None]
    assert payloads[0]["tileWidth"] == 6 and payloads[0]["tileHeight"] == 4
    expected = np.round(grids[0][1] / grids[0][1].max() * 255)
    assert np.abs(unpack_map(payloads[0], 1).astype(float) - expected).max() <= 1
    assert payloads[0]["image"] is None and "image not found: gone.png" in payloads[0]["notes"]
    assert config["meta"]["model"] == "toy"


# ---------------------------------------------------------------- ground truth and the CLI


def test_boxes_give_pointing_per_target_and_per_item(tmp_path: Path) -> None:
    out = tmp_path / "out"
    explanations = write_caption_output(out, {"scene": ["a", "red", "circle"]})
    peaks = [explanations["scene"].peak_xy(t) for t in range(3)]
    x, y = peaks[1]
    boxes = tmp_path / "boxes.jsonl"
    lines = [
        {"image": "scene.png", "label": "red", "box": [x - 2, y - 2, x + 2, y + 2]},  # around red's peak: a hit
        {"image": "scene.png", "label": "circle", "box": [x - 2, y - 2, x + 2, y + 2]},  # circle peaks elsewhere: a miss
    ]
    boxes.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (payload,), (entry,), _ = page_data(write_viewer(out, boxes=boxes))
    assert [target["hit"] for target in payload["targets"]] == [None, True, False]
    assert entry["pointing"] == 0.5
    assert payload["targets"][1]["truth"] == [[x - 2, y - 2, x + 2, y + 2]]


def test_cli_view_writes_the_page_and_bad_input_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    write_caption_output(out, {"scene": ["a", "dog"]})
    assert main(["view", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"mmcam view: wrote {out / 'viewer.html'}"
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad, message in (
        (tmp_path / "missing", "output folder not found"),
        (tmp_path / "empty", "no mmcam records in"),
        (tmp_path / "file.txt", "is not a folder"),
    ):
        assert main(["view", str(bad)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
        assert captured.err.startswith("mmcam: error: ") and message in captured.err
    assert not (tmp_path / "empty" / "viewer.html").exists()


def test_pack_item_without_thumbnail_and_failed_item(tmp_path: Path) -> None:
    from mmcam.viewer.items import ViewItem

    packed = pack_item(ViewItem(name="x", kind="caption", size=None, pixels=None, error="boom"), thumbnail=False)
    assert packed.payload["error"] == "boom" and packed.payload["sheet"] is None and packed.entry["thumb"] is None


def test_named_explanations_page_and_a_runs_notebook_view(tmp_path: Path) -> None:
    image = tmp_path / "im.png"
    Image.fromarray(toy_image((40, 40))).save(image)
    page = write_explanations(tmp_path / "demo.html", [("caption: im", caption_explanation(image, ["a", "dog"], (40, 40))), ("vqa: im", vqa_explanation(image))], title="demo")
    payloads, entries, config = page_data(page)
    assert [entry["name"] for entry in entries] == ["caption: im", "vqa: im"] and config["mode"] == "run"
    assert [target["label"] for target in payloads[1]["targets"]] == ["red", "blue", "red vs blue"]
    assert "attention" in payloads[0]["targets"][0]["maps"] and "contrast" in payloads[0]["targets"][1]["maps"]
    out = tmp_path / "out"
    write_caption_output(out, {"s0": ["a"], "s1": ["b"]})
    fragment = Viewer(out)._repr_html_()
    parser = _Blocks()
    parser.feed(fragment)
    (index,) = [json.loads(text) for attrs, text in parser.scripts if attrs.get("data-mmcam") == "index"]
    assert [entry["name"] for entry in index] == ["s0", "s1"] and not (out / "viewer.html").exists()
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(InputError, match="no mmcam records"):
        Viewer(tmp_path / "empty-run")  # fails in the cell that opens it


@pytest.mark.slow
def test_viewer_over_a_real_batch_run_of_the_shipped_models(tmp_path: Path, monkeypatch, capsys) -> None:
    import easy_vqa

    from mmcam.data.scenes import make_split

    monkeypatch.chdir(tmp_path)
    scene = make_split("test", 2)[1]
    Image.fromarray(scene.image).save("scene.png")
    Path("captions.jsonl").write_text(json.dumps({"image": "scene.png"}) + "\n")
    Path("questions.jsonl").write_text(json.dumps({"image": easy_vqa.get_test_image_paths()[3], "question": "what color is the shape?"}) + "\n")
    assert main(["caption", "--batch", "captions.jsonl", "--out", "cap", "--json"]) == 0
    assert main(["vqa", "--batch", "questions.jsonl", "--out", "vqa", "--json", "--top", "2"]) == 0
    caption_record_, vqa_record_ = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert main(["view", "cap"]) == 0 and main(["view", "vqa"]) == 0
    (payload,), _, _ = page_data(Path("cap/viewer.html"))
    assert [target["label"] for target in payload["targets"]] == [word["word"] for word in caption_record_["words"]]
    for t, word in enumerate(caption_record_["words"]):
        assert set(payload["targets"][t]["maps"]) == {"heatmap", "counterfactual", "contrast", "attention"}
        assert payload["targets"][t]["guided"] is not None and payload["targets"][t]["peak"] == word["peak_xy"]
        saved = np.load(word["heatmap"])
        assert np.abs(unpack_map(payload, t) / 255 - saved).max() <= 0.5 / 255 + 1e-6
    (answer,), _, _ = page_data(Path("vqa/viewer.html"))
    assert [target["label"] for target in answer["targets"]] == [item["answer"] for item in vqa_record_["explanations"]]
    assert answer["question"] == [word["word"] for word in vqa_record_["question_words"]]


def many_targets_item(count: int = 70, size: tuple[int, int] = (128, 96)):
    """One item with ``count`` words, more map tiles than one sheet column holds."""
    from mmcam.viewer.items import ViewItem, ViewTarget

    spots = [(5 + (t * 37) % 86, 5 + (t * 53) % 118) for t in range(count)]
    targets = [ViewTarget(label=f"w{t}", logprob=-0.01 * t, maps={"heatmap": gaussian(size, spot, 4.0)}) for t, spot in enumerate(spots)]
    return ViewItem(name="long", kind="caption", size=size, pixels=toy_image(size), targets=targets)


def test_tiles_wrap_into_columns_and_still_decode() -> None:
    item = many_targets_item()
    payload = pack_item(item, thumbnail=False).payload
    assert payload["tileRows"] == 64  # 8192 / 128 rows, then a second column
    for t in (0, 63, 64, 69):
        expected = np.round(item.targets[t].maps["heatmap"] * 255)
        assert np.array_equal(unpack_map(payload, t), expected.astype(np.uint8))
