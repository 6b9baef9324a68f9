"""CLI failures (issue 10, items 10 and 11): an all-zero map is printed as such in text output,
a record the printer cannot print ends only that item of a batch, every subcommand's ``--help``
works, and an unexpected exception is still ONE line ``mmcam: error: TYPE: ...`` with exit 2.

Blank maps and internal errors are provoked by wrapping the shipped adapters that
``mmcam.registry.load`` returns; one real process shows the end-to-end exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import easy_vqa
import numpy as np
import pytest
from PIL import Image

import mmcam.cli
import mmcam.registry
from mmcam.cli import build_parser, main
from mmcam.data.scenes import make_split
from reliability_support import one_torch_thread  # noqa: F401

QUESTION = "what color is the shape?"
NO_PEAK = "no peak (all-zero map)"


def _blank(explanation):
    """The same explanation with every map all zero (as for a layer the score does not use)."""
    return dataclasses.replace(explanation, grid_maps=np.zeros_like(explanation.grid_maps))


@pytest.fixture
def blank_maps(monkeypatch) -> dict:
    """Adapters from ``mmcam.registry.load`` whose maps are all zero for the images named in
    ``blank["sources"]`` (every image when it is None)."""
    blank: dict = {"sources": None}
    real_load = mmcam.registry.load

    def blanked(explanation):
        wanted = blank["sources"]
        return _blank(explanation) if wanted is None or explanation.image.source in wanted else explanation

    def load(*args, **kwargs):
        adapter = real_load(*args, **kwargs)
        if hasattr(adapter, "explain_batch"):  # classifiers and VQA; captioners explain one image
            real_batch = adapter.explain_batch
            adapter.explain_batch = lambda *a, **k: [blanked(e) for e in real_batch(*a, **k)]
        real_single = adapter.explain
        adapter.explain = lambda *a, **k: blanked(real_single(*a, **k))
        return adapter

    monkeypatch.setattr(mmcam.registry, "load", load)
    return blank


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(make_split("test", 1)[0].image).save(path)
    return path


# -- item 10: all-zero maps in text output ------------------------------------------------------------


def test_text_output_of_an_all_zero_map_says_so(capsys, blank_maps, scene_path) -> None:
    vqa_image = easy_vqa.get_test_image_paths()[0]
    assert main(["vqa", vqa_image, QUESTION, "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{vqa_image}: {QUESTION!r} -> ")
    assert all(f"{NO_PEAK}, box None" in line for line in lines[1:3])

    assert main(["caption", str(scene_path), "--caption", "a red circle", "--method", "gradcam"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{scene_path}: 'a red circle' (gradcam on encoder)"
    assert [line.split()[0] for line in lines[1:]] == ["a", "red", "circle"]
    assert all(f"{NO_PEAK}  box None" in line for line in lines[1:])

    assert main(["classify", str(scene_path), "--method", "gradcam"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].endswith(f": {NO_PEAK}, box None")


def test_text_output_of_a_map_with_a_peak_is_unchanged(capsys, scene_path) -> None:
    assert main(["caption", str(scene_path), "--caption", "a red circle", "--method", "gradcam", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert main(["caption", str(scene_path), "--caption", "a red circle", "--method", "gradcam"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for word, line in zip(record["words"], lines[1:], strict=True):
        x, y = word["peak_xy"]
        assert f"peak ({x}, {y})  box {word['bbox']}" in line


def test_a_blank_map_in_a_text_batch_ends_nothing(capsys, tmp_path, blank_maps, scene_path) -> None:
    other = tmp_path / "other.png"
    Image.fromarray(make_split("test", 2)[1].image).save(other)
    blank_maps["sources"] = {str(scene_path)}
    batch = tmp_path / "items.jsonl"
    batch.write_text("".join(json.dumps({"image": str(p), "caption": "a red circle"}) + "\n" for p in (scene_path, other)))
    assert main(["caption", "--batch", str(batch), "--method", "gradcam"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and lines[4].startswith(f"{other}: 'a red circle'")
    assert all(NO_PEAK in line for line in lines[1:4]) and not any(NO_PEAK in line for line in lines[5:])


def test_a_record_the_printer_cannot_print_fails_only_that_item(capsys, monkeypatch, tmp_path) -> None:
    paths = easy_vqa.get_test_image_paths()
    real_print = mmcam.cli._print_vqa

    def fragile_print(record):
        if record["image"] == paths[1] and "error" not in record:
            raise KeyError("probability")
        real_print(record)

    monkeypatch.setattr(mmcam.cli, "_print_vqa", fragile_print)
    batch = tmp_path / "items.jsonl"
    batch.write_text("".join(json.dumps({"image": paths[i], "question": QUESTION}) + "\n" for i in range(3)))
    assert main(["vqa", "--batch", str(batch), "--method", "gradcam", "--batch-size", "3"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.startswith("  ")] == [
        f"{paths[0]}: {QUESTION!r} -> " + lines[0].split(" -> ")[1],
        f"{paths[1]}: error: could not print the record: KeyError: 'probability'",
        f"{paths[2]}: {QUESTION!r} -> " + lines[-3].split(" -> ")[1],
    ]


# -- item 11: --help everywhere, and one line for every failure ---------------------------------------


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every subcommand and sub-subcommand, as argument prefixes (the bare command included)."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


def test_every_command_has_working_help(capsys) -> None:
    paths = _command_paths(build_parser())
    assert {("classify",), ("caption",), ("vqa",), ("eval",), ("eval", "localization"), ("demo",)} <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        assert exited.value.code == 0, path
        captured = capsys.readouterr()
        assert captured.out.startswith(" ".join(["usage: mmcam", *path])) and captured.err == "", path


def test_eval_help_lists_the_evaluations_with_their_text(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "the paper's weakly-supervised localization (15% of max, largest segment, IoU >= 0.5)" in text


@pytest.fixture
def broken_adapter(monkeypatch):
    """Adapters whose ``explain_batch`` fails inside, as a bug or an unsupported model would,
    for the images in the returned set (all images when it is empty)."""
    failing: set[str] = set()
    real_load = mmcam.registry.load

    def load(*args, **kwargs):
        adapter = real_load(*args, **kwargs)
        real_batch = adapter.explain_batch

        def explain_batch(images, *rest, **options):
            sources = {getattr(image, "source", str(image)) for image in images}
            if not failing or sources & failing:
                raise RuntimeError("tensor shapes (1, 768) and (1, 197, 768) do not match\nsecond line of detail")
            return real_batch(images, *rest, **options)

        adapter.explain_batch = explain_batch
        return adapter

    monkeypatch.setattr(mmcam.registry, "load", load)
    return failing


def test_an_unexpected_exception_is_one_line_and_exit_2(capsys, broken_adapter) -> None:
    assert main(["vqa", easy_vqa.get_test_image_paths()[0], QUESTION, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "mmcam: error: RuntimeError: tensor shapes (1, 768) and (1, 197, 768) do not match\n"


def test_an_unexpected_exception_in_a_batch_fails_only_its_item(capsys, tmp_path, broken_adapter) -> None:
    paths = easy_vqa.get_test_image_paths()
    broken_adapter.add(paths[1])
    batch = tmp_path / "items.jsonl"
    batch.write_text("".join(json.dumps({"image": paths[i], "question": QUESTION}) + "\n" for i in range(3)))
    assert main(["vqa", "--batch", str(batch), "--json", "--batch-size", "3"]) == 1
    first, failed, last = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert failed == {"image": paths[1], "error": "RuntimeError: tensor shapes (1, 768) and (1, 197, 768) do not match"}
    assert first["image"] == paths[0] and last["image"] == paths[2] and "error" not in first and "error" not in last


def test_process_a_layer_that_cannot_give_a_map_is_one_line_and_exit_2(tmp_path) -> None:
    """A timm ResNet's classifier layer ``fc`` has no spatial grid: no map can be made from it."""
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    result = subprocess.run(
        [sys.executable, "-m", "mmcam", "classify", str(image), "--model", "resnet18", "--layer", "fc"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("mmcam: warning: ")]
    assert len(errors) == 1 and errors[0].startswith("mmcam: error: ") and "'fc'" in errors[0], result.stderr
