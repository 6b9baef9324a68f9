"""Bad input (issue #7): every case either works or ends in ONE line on stderr that starts with
``mmcam: error: ``, exit code 2, no traceback.

Images, texts and options go through the CLI in-process (``main([...])`` + capsys) and through the
Python API (``mmcam.load``, ``adapter.explain``, ``mmcam.io.load_image``); a few real processes
prove the exit code and the absence of a traceback end to end.

Documented behaviour decided here for long text: questions and captions have no length limit and
are read whole. easy-VQA's GRU reads a question of any length. The shapes captioner scores a
caption of any length by teacher forcing; explaining every word of an L-word caption takes L
gradients through L decoder steps, so time grows faster than L (all 103 words: 2 s with gradcam,
5 s with the default guided_hirescam, one CPU thread); ``--words`` picks a few words of a long one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import easy_vqa
import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from mmcam.adapters.vqa import VQAAdapter
from mmcam.cli import main
from mmcam.errors import InputError
from mmcam.io import LoadedImage, load_image
from reliability_support import one_torch_thread  # noqa: F401

CAPTIONER_WEIGHTS = Path(__file__).resolve().parents[1] / "mmcam" / "models" / "weights" / "shapes_captioner.safetensors"
needs_captioner = pytest.mark.skipif(
    not CAPTIONER_WEIGHTS.is_file(), reason=f"shipped captioner weights not present yet: {CAPTIONER_WEIGHTS}"
)
QUESTION = "what shape is there?"
HEIGHT, WIDTH = 40, 60


def _gradient_image() -> np.ndarray:
    """A smooth (HEIGHT, WIDTH, 3) image, so lossy formats stay close to it, with a red block
    in the top-left corner that shows where a rotation moved it."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([rows * 255 // (HEIGHT - 1), cols * 255 // (WIDTH - 1), np.full_like(rows, 96)], axis=-1)
    image[:12, :12] = (255, 0, 0)
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every image case as a file, written once per module."""
    folder = tmp_path_factory.mktemp("images")
    rgb = _gradient_image()
    paths = {name: folder / name for name in (
        "ok.png", "ok.jpg", "one.png", "rgba.png", "la.png", "palette.png", "gray16.png", "cmyk.jpg",
        "cmyk.tif", "exif6.jpg", "animated.gif", "truncated.png", "truncated.jpg", "empty.png",
        "notes.png", "drawing.svg", "data.xyz",
    )}
    Image.fromarray(rgb).save(paths["ok.png"])
    Image.fromarray(rgb).save(paths["ok.jpg"], quality=95)
    Image.fromarray(rgb[:1, :1]).save(paths["one.png"])
    alpha = np.zeros((HEIGHT, WIDTH), np.uint8)
    alpha[:, WIDTH // 2 :] = 255  # left half fully transparent, right half opaque
    Image.fromarray(np.dstack([rgb, alpha])).save(paths["rgba.png"])
    Image.fromarray(np.dstack([rgb[..., 1], alpha]), mode="LA").save(paths["la.png"])
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(paths["palette.png"])
    gray16 = (np.linspace(0, 65535, HEIGHT * WIDTH).reshape(HEIGHT, WIDTH)).astype(np.uint16)
    Image.fromarray(gray16).save(paths["gray16.png"])
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk.jpg"], quality=95)
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk.tif"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    Image.fromarray(rgb).save(paths["exif6.jpg"], quality=95, exif=exif.tobytes())
    frames = [Image.fromarray(np.full((HEIGHT, WIDTH, 3), value, np.uint8)) for value in (0, 255, 128)]
    frames[0].save(paths["animated.gif"], save_all=True, append_images=frames[1:], duration=50, loop=0)
    for name in ("truncated.png", "truncated.jpg"):
        whole = paths[name.replace("truncated", "ok")].read_bytes()
        paths[name].write_bytes(whole[: len(whole) // 2])
    paths["empty.png"].write_bytes(b"")
    paths["notes.png"].write_text("not an image, just text with a .png name\n")
    paths["drawing.svg"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>\n')
    paths["data.xyz"].write_bytes(bytes(range(256)) * 4)
    return paths


@pytest.fixture(scope="module")
def vqa() -> VQAAdapter:
    return mmcam.load("easy-vqa")


def _single_error(capsys, *fragments: str) -> str:
    """stderr is exactly one line ``mmcam: error: ...`` holding every fragment; no stdout."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("mmcam: error: "), captured.err
    for fragment in fragments:
        assert fragment in captured.err, (fragment, captured.err)
    return captured.err


def _warnings(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert all(line.startswith("mmcam: warning: ") for line in lines), stderr
    return lines


# -- images through the CLI ------------------------------------------------------------------------

BROKEN_IMAGES = [
    ("missing.png", "image not found: "),
    ("folder", "is a directory, not an image file"),
    ("empty.png", "is an empty file, not an image"),
    ("notes.png", "is not a readable image (supported: PNG, JPEG"),
    ("truncated.png", "could not be decoded (truncated or corrupt?)"),
    ("truncated.jpg", "could not be decoded (truncated or corrupt?)"),
    ("drawing.svg", "is not a readable image (supported: PNG, JPEG"),
    ("data.xyz", "is not a readable image (supported: PNG, JPEG"),
]


@pytest.mark.parametrize(("name", "message"), BROKEN_IMAGES, ids=[name for name, _ in BROKEN_IMAGES])
def test_cli_broken_images_fail_in_one_line(files, tmp_path, capsys, name, message) -> None:
    path = {"missing.png": tmp_path / "missing.png", "folder": tmp_path}.get(name) or files[name]
    assert main(["vqa", str(path), QUESTION, "--json"]) == 2
    _single_error(capsys, message, str(path))


# name -> (shape the model sees as (H, W), the warning expected on stderr or None)
READABLE_IMAGES = {
    "ok.png": ((HEIGHT, WIDTH), None),
    "ok.jpg": ((HEIGHT, WIDTH), None),
    "one.png": ((1, 1), None),
    "rgba.png": ((HEIGHT, WIDTH), "transparency composited on white"),
    "la.png": ((HEIGHT, WIDTH), "transparency composited on white"),
    "palette.png": ((HEIGHT, WIDTH), None),
    "gray16.png": ((HEIGHT, WIDTH), None),
    "cmyk.jpg": ((HEIGHT, WIDTH), None),
    "cmyk.tif": ((HEIGHT, WIDTH), None),
    "exif6.jpg": ((WIDTH, HEIGHT), "EXIF orientation 6 applied"),
    "animated.gif": ((HEIGHT, WIDTH), "animated image with 3 frames: the first frame is explained"),
}


@pytest.mark.parametrize("name", list(READABLE_IMAGES))
def test_cli_every_readable_image_kind_is_explained(files, capsys, name) -> None:
    (height, width), warning = READABLE_IMAGES[name]
    assert main(["vqa", str(files[name]), QUESTION, "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["image"] == str(files[name]) and record["answer"] == record["explanations"][0]["answer"]
    x, y = record["explanations"][0]["peak_xy"]
    assert 0 <= x < width and 0 <= y < height  # in the frame the user sees (rotated for EXIF)
    box = record["explanations"][0]["bbox"]
    assert box is None or (box[2] < width and box[3] < height)
    expected = [] if warning is None else [f"mmcam: warning: {files[name]}: {warning}"]
    assert _warnings(captured.err) == expected


def test_cli_exif_rotated_map_file_has_the_rotated_size(files, tmp_path, capsys) -> None:
    assert main(["vqa", str(files["exif6.jpg"]), QUESTION, "--json", "--out", str(tmp_path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert np.load(record["explanations"][0]["heatmap"]).shape == (WIDTH, HEIGHT)


# -- images through the Python API -----------------------------------------------------------------


def test_api_conversions_keep_the_pixels_right(files) -> None:
    rgb = _gradient_image()
    np.testing.assert_array_equal(load_image(files["ok.png"]).pixels, rgb)
    np.testing.assert_array_equal(load_image(files["cmyk.tif"]).pixels, rgb)  # CMYK -> RGB is exact here
    assert np.abs(load_image(files["cmyk.jpg"]).pixels.astype(int) - rgb).mean() < 4
    with Image.open(files["palette.png"]) as palette:
        np.testing.assert_array_equal(load_image(files["palette.png"]).pixels, np.asarray(palette.convert("RGB")))
    rgba = load_image(files["rgba.png"])
    assert (rgba.pixels[:, : WIDTH // 2] == 255).all()  # transparent -> the white background
    np.testing.assert_array_equal(rgba.pixels[:, WIDTH // 2 :], rgb[:, WIDTH // 2 :])
    la = load_image(files["la.png"]).pixels
    assert (la[:, : WIDTH // 2] == 255).all()
    np.testing.assert_array_equal(la[:, WIDTH // 2 :], np.repeat(rgb[:, WIDTH // 2 :, 1:2], 3, axis=2))
    gray16 = load_image(files["gray16.png"]).pixels  # full 16-bit range -> full 8-bit range
    expected = np.round(np.linspace(0, 65535, HEIGHT * WIDTH).astype(np.uint16) / 65535 * 255).reshape(HEIGHT, WIDTH)
    assert np.abs(gray16[..., 0].astype(int) - expected).max() <= 1
    assert (gray16[..., 0] == gray16[..., 2]).all()


def test_api_exif_orientation_is_applied_to_pixels_and_maps(files, vqa) -> None:
    loaded = load_image(files["exif6.jpg"])
    assert loaded.size == (WIDTH, HEIGHT) and loaded.notes == ("EXIF orientation 6 applied",)
    # orientation 6: shown rotated 90 degrees clockwise, so the red top-left block is top-right
    rotated = np.rot90(_gradient_image(), k=-1)
    assert np.abs(loaded.pixels.astype(int) - rotated).mean() < 4
    assert loaded.pixels[:10, -10:, 0].min() > 200 and loaded.pixels[:10, -10:, 1].max() < 60
    explanation = vqa.explain(files["exif6.jpg"], QUESTION)
    assert explanation.heatmaps.shape == (1, WIDTH, HEIGHT)
    assert explanation.guided.shape == (1, WIDTH, HEIGHT, 3)


def test_api_animated_gif_uses_the_first_frame_and_says_so(files, vqa) -> None:
    loaded = load_image(files["animated.gif"])
    assert loaded.pixels.max() == 0  # frame 1 is black; frames 2 and 3 are white and gray
    assert loaded.notes == ("animated image with 3 frames: the first frame is explained",)
    assert vqa.explain(files["animated.gif"], QUESTION).image.notes == loaded.notes


def test_api_one_pixel_image_gives_a_one_pixel_map(files, vqa) -> None:
    explanation = vqa.explain(files["one.png"], QUESTION)
    assert explanation.heatmaps.shape == (1, 1, 1) and explanation.guided.shape == (1, 1, 1, 3)
    assert np.isfinite(explanation.heatmaps).all() and 0 <= explanation.heatmaps.min() <= explanation.heatmaps.max() <= 1


def test_api_6000x4000_image_gives_a_map_of_that_size(tmp_path, vqa) -> None:
    rows, cols = np.mgrid[0:4000, 0:6000]
    pixels = np.stack([(rows // 16) % 256, (cols // 24) % 256, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    path = tmp_path / "large.bmp"  # uncompressed: quick to write and read
    Image.fromarray(pixels).save(path)
    del rows, cols, pixels
    explanation = vqa.explain(path, QUESTION, guided=False, counterfactual=False)
    assert explanation.image.size == (4000, 6000)
    assert explanation.heatmaps.shape == (1, 4000, 6000) and explanation.heatmaps.dtype == np.float32
    assert np.isfinite(explanation.heatmaps).all()
    assert explanation.heatmaps.min() >= 0 and explanation.heatmaps.max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[0, 1], [2, 3]], "unsupported image type list"),
        (np.zeros((4, 4, 2), np.uint8), "image array has shape (4, 4, 2)"),
        (np.zeros((0, 5, 3), np.uint8), "image has no pixels"),
        (np.full((4, 4, 3), np.nan), "NaN or infinite"),
        (np.full((4, 4, 3), 1.5), "float image values must lie in [0, 1]"),
        (np.full((4, 4, 3), -3, np.int64), "integer image values must lie in [0, 255]"),
        (np.zeros((4, 4, 3), bool), "unsupported image dtype bool"),
        (torch.zeros(1, 3, 4, 4), "image array has shape (1, 3, 4, 4)"),
    ],
    ids=["list", "two-channels", "empty", "nan", "float-range", "negative", "bool", "4d-tensor"],
)
def test_api_bad_arrays_raise_input_errors(value, message) -> None:
    with pytest.raises(InputError) as raised:
        load_image(value)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_api_arrays_and_tensors_of_the_same_image_agree() -> None:
    rgb = _gradient_image()
    as_float = rgb.astype(np.float64) / 255
    tensor = torch.from_numpy(as_float).permute(2, 0, 1).float().requires_grad_(True)
    for value in (rgb, as_float, tensor, Image.fromarray(rgb), LoadedImage(rgb)):
        np.testing.assert_array_equal(load_image(value).pixels, rgb)
    gray = load_image(rgb[..., 0])
    assert gray.size == (HEIGHT, WIDTH) and (gray.pixels[..., 0] == gray.pixels[..., 2]).all()


# -- text: VQA questions -----------------------------------------------------------------------------


@pytest.mark.parametrize(("question", "message"), [("", "the question is empty"), ("  \t ", "the question is empty"), ("?!? ...", "has no words")])
def test_cli_empty_questions_fail(capsys, question, message) -> None:
    image = easy_vqa.get_test_image_paths()[0]
    assert main(["vqa", image, question, "--json"]) == 2
    _single_error(capsys, message)


def test_cli_unknown_question_words_warn_once_naming_them(capsys) -> None:
    image = easy_vqa.get_test_image_paths()[0]
    assert main(["vqa", image, "¿Qué colour is the colour of the shape? 🙂", "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    words = ["¿qué", "colour", "is", "the", "colour", "of", "the", "shape", "🙂"]
    assert [w["word"] for w in record["question_words"]] == words
    assert _warnings(captured.err) == [
        "mmcam: warning: question words unknown to easy-vqa, read as its unknown token: ¿qué, colour, 🙂"
    ]


def test_cli_case_and_punctuation_do_not_change_the_answer(capsys) -> None:
    image = easy_vqa.get_test_image_paths()[3]
    assert main(["vqa", image, "what color is the shape", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["vqa", image, "  WHAT Color is, the SHAPE?!  ", "--json"]) == 0
    shouted = json.loads(capsys.readouterr().out)
    for key in ("answer", "probability", "explanations", "question_words"):
        assert plain[key] == shouted[key], key


def test_long_question_is_read_whole(vqa) -> None:
    question = " ".join(["is there a red circle in the image"] * 45) + "?"  # 360 words
    explanation = vqa.explain(easy_vqa.get_test_image_paths()[0], question, guided=False, counterfactual=False)
    assert len(explanation.info["question_words"]) == 360
    assert explanation.info["word_attributions"].shape == (1, 360)
    assert np.isfinite(explanation.info["word_attributions"]).all()


# -- text: captions (the shipped captioner) ----------------------------------------------------------


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory) -> Path:
    from mmcam.data.scenes import make_split

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(make_split("test", 1)[0].image).save(path)
    return path


@needs_captioner
@pytest.mark.parametrize(
    ("caption", "fragments"),
    [
        ("", ["the caption is empty"]),
        (" \n ", ["the caption is empty"]),
        ("?! ...", ["has no words"]),
        ("a purple blob and a red circle", ["words not in the shapes-captioner vocabulary: purple, blob;", "known words: a, and"]),
        ("a red 🙂 círculo", ["words not in the shapes-captioner vocabulary: 🙂, círculo;"]),
    ],
    ids=["empty", "whitespace", "punctuation", "unknown", "non-ascii"],
)
def test_cli_bad_captions_fail_naming_the_problem(capsys, scene_path, caption, fragments) -> None:
    assert main(["caption", str(scene_path), "--caption", caption, "--json"]) == 2
    _single_error(capsys, *fragments)


@needs_captioner
def test_cli_caption_case_and_punctuation_are_normalised(capsys, scene_path) -> None:
    assert main(["caption", str(scene_path), "--caption", "A RED, Circle!!", "--json", "--method", "gradcam"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["caption"] == "a red circle" and [w["word"] for w in record["words"]] == ["a", "red", "circle"]


@needs_captioner
def test_cli_long_caption_is_scored_whole(capsys, scene_path) -> None:
    caption = " ".join(["a red circle and"] * 30) + " a blue rectangle"  # 123 words
    args = ["caption", str(scene_path), "--caption", caption, "--words", "0", "122", "--method", "gradcam", "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["caption"].split()) == 123
    assert [(w["word"], w["index"]) for w in record["words"]] == [("a", 0), ("rectangle", 122)]
    assert all(np.isfinite(w["logprob"]) and w["logprob"] <= 0 for w in record["words"])


# -- options ----------------------------------------------------------------------------------------


def test_cli_unknown_model_lists_the_available_ones(capsys) -> None:
    assert main(["vqa", easy_vqa.get_test_image_paths()[0], QUESTION, "--model", "no-such-model"]) == 2
    _single_error(capsys, "unknown model 'no-such-model'; available: easy-vqa, efficientnet_lite0, shapes-captioner")


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--layer", "image_encodr"], "unknown layer 'image_encodr'; candidates: image_encoder"),
        (["--answer", "purpel"], "unknown answer 'purpel'; closest: "),
    ],
    ids=["layer", "answer"],
)
def test_cli_bad_model_options_fail_before_any_work(capsys, tmp_path, batch, option, message) -> None:
    """In a batch too: a wrong layer or answer is the command's error (exit 2), not each item's."""
    image = easy_vqa.get_test_image_paths()[0]
    lines = tmp_path / "items.jsonl"
    lines.write_text(json.dumps({"image": image, "question": QUESTION}) + "\n")
    sources = ["--batch", str(lines)] if batch else [image, QUESTION]
    out = tmp_path / "out"
    assert main(["vqa", *sources, *option, "--out", str(out), "--json"]) == 2
    _single_error(capsys, message)
    assert not out.exists()


def test_api_unknown_layer_fails_at_load() -> None:
    with pytest.raises(InputError, match=r"unknown layer 'image_encoder\.layers\.99'; candidates: "):
        mmcam.load("easy-vqa", layer="image_encoder.layers.99")


@needs_captioner
def test_api_unknown_captioner_layer_fails_at_load() -> None:
    with pytest.raises(InputError, match=r"unknown layer 'encoderr'; candidates: encoder"):
        mmcam.load("shapes-captioner", layer="encoderr")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--answer", "purpel"], ["unknown answer 'purpel'; closest: ", "red", "; answers: "]),
        (["--method", "gradcam+++"], ["argument --method: invalid choice: 'gradcam+++'"]),
        (["--top", "0"], ["argument --top: expected a positive integer, got 0"]),
        (["--top", "99"], ["cannot explain the top 99 answers: easy-vqa has 13 answers"]),
        (["--answer", "red", "--top", "2"], ["give --answer or --top, not both"]),
        (["--out", "{file}"], ["is a file; give a directory"]),
        (["--out", "{file}/maps"], ["cannot be created: Not a directory"]),
        (["--resume"], ["--resume needs --batch and --out"]),
    ],
    ids=["unknown-answer", "unknown-method", "top-0", "top-too-large", "answer-and-top", "out-is-file", "out-under-file", "resume-without-batch"],
)
def test_cli_bad_options_fail_in_one_line(capsys, tmp_path, args, fragments) -> None:
    regular_file = tmp_path / "a-file"
    regular_file.write_text("x")  # tests run as root: a path under a regular file is unwritable
    args = [arg.format(file=regular_file) for arg in args]
    assert main(["vqa", easy_vqa.get_test_image_paths()[0], QUESTION, *args, "--json"]) == 2
    _single_error(capsys, *fragments)


def test_api_top_beyond_the_answers_is_an_input_error(vqa) -> None:
    with pytest.raises(InputError, match="easy-vqa has 13 answers"):
        vqa.explain(easy_vqa.get_test_image_paths()[0], QUESTION, top=14)
    every = vqa.explain(easy_vqa.get_test_image_paths()[0], QUESTION, top=13, guided=False, counterfactual=False)
    assert len(every.labels) == 13


def test_cli_invalid_batch_lines_fail_with_their_numbers_and_the_rest_go_on(capsys, tmp_path, files) -> None:
    image = easy_vqa.get_test_image_paths()[0]
    good = json.dumps({"image": image, "question": QUESTION})
    lines = [
        good,
        "{not json",
        "",
        json.dumps(["a", "list"]),
        json.dumps({"image": image}),
        json.dumps({"image": image, "question": QUESTION, "colour": "red"}),
        json.dumps({"image": str(files["truncated.png"]), "question": QUESTION}),
        json.dumps({"image": str(files["animated.gif"]), "question": QUESTION}),
        good,
    ]
    batch = tmp_path / "items.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    assert main(["vqa", "--batch", str(batch), "--json", "--batch-size", "4"]) == 1
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert len(records) == 8  # the blank line 3 is skipped
    first, bad_json, not_object, missing, unknown, truncated, animated, last = records
    assert "error" not in first and "error" not in last and "error" not in animated
    assert bad_json == {"image": "", "error": "line 2: invalid JSON (Expecting property name enclosed in double quotes)"}
    assert not_object["error"].startswith("line 4: expected a JSON object")
    assert missing["error"] == "line 5: missing or non-string field(s): question"
    assert unknown["error"].startswith("line 6: unknown field(s) colour; accepted: answer, image, question")
    assert truncated["image"] == str(files["truncated.png"]) and "could not be decoded" in truncated["error"]
    assert first["explanations"] == last["explanations"]
    # a batch item's image notes are warned about just like a command-line image's
    assert f"mmcam: warning: {files['animated.gif']}: animated image with 3 frames" in captured.err


# -- real processes -----------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcam", *args], capture_output=True, text=True, timeout=300)


def test_process_bad_image_exits_2_with_one_line(files) -> None:
    result = _run("vqa", str(files["truncated.jpg"]), QUESTION, "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"mmcam: error: {files['truncated.jpg']} could not be decoded")


def test_process_bad_option_after_loading_exits_2_with_one_line() -> None:
    result = _run("vqa", easy_vqa.get_test_image_paths()[0], QUESTION, "--top", "50")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mmcam: error: cannot explain the top 50 answers")

