"""The ``mmcam`` command line: argument parsing, one-line errors, JSON lines."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .core.methods import METHODS
from .io import InputError, LoadedImage, load_image

EXIT_USAGE = 2
BATCH_SIZE = 8


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mmcam: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmcam`` console script; returns the exit code."""
    warnings.showwarning = _one_line_warning
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            parser.print_help()
            return EXIT_USAGE
        return int(args.run(args) or 0)
    except InputError as error:
        print(f"mmcam: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mmcam: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmcam", description="Grad-CAM explanations for classifiers, captioners and VQA models.")
    commands = parser.add_subparsers(title="commands", parser_class=_Parser)
    _add_classify(commands)
    _add_demo(commands)
    return parser


def _add_common(command: argparse.ArgumentParser, default_model: str) -> None:
    command.add_argument("--model", default=default_model, help=f"shipped model, timm/torchvision name or hf:PATH (default {default_model})")
    command.add_argument("--weights", help="local state-dict file for a timm/torchvision model")
    command.add_argument("--layer", help="layer to hook (dotted name); default: the model's last conv stage")
    command.add_argument("--method", choices=list(METHODS), help="CAM method")
    command.add_argument("--out", help="directory for .npy maps, overlays and Guided Grad-CAM PNGs")
    command.add_argument("--json", action="store_true", help="print one JSON object per image")


def _add_classify(commands) -> None:
    command = commands.add_parser("classify", help="explain an image classifier's prediction")
    command.add_argument("images", nargs="+", metavar="IMAGE")
    command.add_argument("--target", action="append", metavar="LABEL_OR_INDEX", help="class to explain (repeatable); default: the top prediction")
    _add_common(command, "efficientnet_lite0")
    command.set_defaults(run=_run_classify)


def _add_demo(commands) -> None:
    command = commands.add_parser("demo", help="explain bundled sample images with the shipped models")
    command.add_argument("--out", default="mmcam-demo", help="output folder (default: mmcam-demo)")
    command.set_defaults(run=_run_demo)


def prepare_out(out: str | None) -> Path | None:
    """The output directory, created; a file or an unwritable place is an input error."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out} is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out} cannot be created: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"--out {out} is not writable")
    return path


def unique_stems(sources: Sequence[str]) -> list[str]:
    """File-name stems for images, made unique by a counter where names repeat."""
    stems: list[str] = []
    seen: dict[str, int] = {}
    for source in sources:
        stem = Path(source).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def load_images(paths: Sequence[str]) -> list[LoadedImage]:
    images = [load_image(path) for path in paths]
    for image in images:
        for note in image.notes:
            warnings.warn(f"{image.source}: {note}", stacklevel=1)
    return images


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _run_classify(args: argparse.Namespace) -> int:
    from .records import classify_record
    from .registry import load

    images = load_images(args.images)
    adapter = load(args.model, weights=args.weights, layer=args.layer)
    if getattr(adapter, "kind", None) != "classify":
        raise InputError(f"model {args.model!r} is not a classifier; use 'mmcam {adapter.kind}'")
    targets = [adapter.class_index(target) for target in args.target] if args.target else None
    out = prepare_out(args.out)
    stems = unique_stems(args.images)
    for start in range(0, len(images), BATCH_SIZE):
        batch = images[start : start + BATCH_SIZE]
        explanations = adapter.explain_batch(batch, targets, method=args.method, guided=out is not None)
        for offset, explanation in enumerate(explanations):
            index = start + offset
            written = explanation.save(out, stems[index]) if out else None
            record = classify_record(explanation, args.images[index], written)
            emit(record) if args.json else _print_classify(record)
    return 0


def _print_classify(record: dict[str, Any]) -> None:
    top = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in record["predictions"][:3])
    print(f"{record['image']}: {top}")
    for item in record["explanations"]:
        where = f" -> {item['heatmap']}" if item["heatmap"] else ""
        print(f"  {record['method']} for {item['target']!r}: peak {tuple(item['peak_xy'])}, box {item['bbox']}{where}")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    index = run_demo(prepare_out(args.out))
    print(f"mmcam demo: wrote {index}")
    return 0


def _entry() -> Callable[[], int]:  # pragma: no cover
    return main


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
