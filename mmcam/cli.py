"""The ``mmcam`` command line: argument parsing, one-line errors, JSON lines."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .core.maps import ALL_METHODS
from .batch import error_line
from .core.methods import METHODS
from .io import InputError, LoadedImage, load_image, url_path

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
        print(f"mmcam: error: {error_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mmcam: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mmcam ... --json | head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout at exit)
        return 141
    except Exception as error:  # a bug, or a model mmcam cannot explain: one line all the same
        print(f"mmcam: error: {error_line(error)}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmcam", description="Grad-CAM explanations for classifiers, captioners and VQA models.")
    commands = parser.add_subparsers(title="commands", parser_class=_Parser)
    _add_classify(commands)
    _add_caption(commands)
    _add_vqa(commands)
    _add_eval(commands)
    _add_demo(commands)
    _add_view(commands)
    return parser


def _add_common(command: argparse.ArgumentParser, default_model: str) -> None:
    command.add_argument("--model", default=default_model, help=f"shipped model, timm/torchvision name or hf:PATH (default {default_model})")
    command.add_argument("--weights", help="local state-dict file for a timm/torchvision model")
    command.add_argument("--layer", help="layer to hook (dotted name); default: the model's last conv stage")
    command.add_argument("--method", choices=list(ALL_METHODS), help="CAM method (guided_X: X times |Guided Backprop|); default: the model's")
    command.add_argument("--out", help="directory for .npy maps, overlays and Guided Grad-CAM PNGs")
    command.add_argument("--json", action="store_true", help="print one JSON object per image")


def _add_classify(commands) -> None:
    command = commands.add_parser("classify", help="explain an image classifier's prediction")
    command.add_argument("images", nargs="+", metavar="IMAGE")
    command.add_argument("--target", action="append", metavar="LABEL_OR_INDEX", help="class to explain (repeatable); default: the top prediction")
    _add_common(command, "efficientnet_lite0")
    command.set_defaults(run=_run_classify)


def _add_caption(commands) -> None:
    command = commands.add_parser("caption", help="explain a captioner word by word")
    command.add_argument("images", nargs="*", metavar="IMAGE")
    command.add_argument("--caption", help="caption to explain (default: generate one)")
    command.add_argument("--batch", metavar="FILE.jsonl", help='lines {"image": PATH} or {"image": PATH, "caption": TEXT}')
    command.add_argument("--resume", action="store_true", help="with --batch and --out: skip items already written")
    command.add_argument("--beam", type=_positive_int, default=1, metavar="N", help="beam size when generating (default 1: greedy)")
    command.add_argument("--words", nargs="+", metavar="WORD", help="explain only these words (positions or words)")
    command.add_argument("--score", choices=["logprob", "logit"], default="logprob", help="y_t: log-prob (default) or pre-softmax logit")
    command.add_argument("--batch-size", type=_positive_int, default=BATCH_SIZE, help=f"images per forward/backward pass (default {BATCH_SIZE})")
    _add_dataset_options(command)
    _add_common(command, "shapes-captioner")
    command.set_defaults(run=_run_caption)


def _add_vqa(commands) -> None:
    command = commands.add_parser("vqa", help="explain a VQA model's answers")
    command.add_argument("inputs", nargs="*", metavar="IMAGE QUESTION")
    command.add_argument("--answer", action="append", metavar="A", help="answer to explain (repeatable); default: the prediction")
    command.add_argument("--top", type=_positive_int, default=1, metavar="K", help="explain the K best answers (default 1)")
    command.add_argument("--contrast", nargs=2, metavar=("A", "B"), help="with --out: also write the map of score(A) - score(B), 'why A and not B'")
    command.add_argument("--batch", metavar="FILE.jsonl", help='lines {"image": PATH, "question": TEXT} (optional "answer")')
    command.add_argument("--resume", action="store_true", help="with --batch and --out: skip items already written")
    command.add_argument("--batch-size", type=_positive_int, default=BATCH_SIZE, help=f"minibatch size (default {BATCH_SIZE})")
    _add_dataset_options(command)
    _add_common(command, "easy-vqa")
    command.set_defaults(run=_run_vqa)


def _add_dataset_options(command: argparse.ArgumentParser) -> None:
    """Options of a dataset run (--batch FILE --out DIR --format parquet); see README "Datasets"."""
    command.add_argument("--format", choices=["records", "parquet"], default="records", help="with --batch and --out: JSON records and .npy files per item (default), or Parquet parts and a manifest")
    command.add_argument("--engine", choices=["local", "ray"], default="local", help="with --format parquet: this machine (default; under torchrun, one shard per rank) or Ray Data")
    command.add_argument("--workers", type=_non_negative_int, metavar="N", help="local: image-decoding processes (default 2); ray: actors (default 2)")
    command.add_argument("--gpus-per-worker", type=float, default=0, metavar="G", help="ray: GPUs per actor (default 0)")
    command.add_argument("--device", default="cpu", help="local: cpu, cuda or cuda:N (default cpu)")
    command.add_argument("--quiet", action="store_true", help="with --format parquet: no progress bar")


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "a non-negative")


def _check_dataset_options(args: argparse.Namespace) -> None:
    """Options of a dataset run given to a records run would be ignored: say so instead."""
    given = [
        option
        for option, value, default in (("--engine", args.engine, "local"), ("--device", args.device, "cpu"), ("--workers", args.workers, None), ("--gpus-per-worker", args.gpus_per_worker, 0))
        if value != default
    ]
    if given and args.format != "parquet":
        raise InputError(f"{', '.join(given)} need --format parquet (with --batch and --out)")


def _run_dataset(args: argparse.Namespace, task: str) -> int:
    """``--format parquet``: the whole items file through :func:`mmcam.explain_dataset`."""
    from .datasets import explain_dataset

    if not (args.batch and args.out):
        raise InputError("--format parquet needs --batch FILE.jsonl and --out DIR")
    options = {"words": args.words, "score": args.score, "beam": args.beam} if task == "caption" else {"answers": args.answer, "top": args.top}
    manifest = explain_dataset(
        args.batch, args.out, task=task, model=args.model, weights=args.weights, layer=args.layer, method=args.method,
        batch_size=args.batch_size, engine=args.engine, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
        device=args.device, resume=args.resume, progress=not args.quiet, **options,
    )
    if os.environ.get("RANK", "0") == "0" and manifest.is_file():  # under torchrun, rank 0 reports
        summary = json.loads(manifest.read_text(encoding="utf-8"))
        print(f"mmcam {task}: {summary['items']} items ({summary['failed']} failed), {summary['rows']} rows -> {manifest}")
        return 1 if summary["failed"] else 0
    return 0


def _add_eval(commands) -> None:
    command = commands.add_parser("eval", help="evaluate explanations: grounding, faithfulness, localization, sanity")
    evaluations = command.add_subparsers(title="evaluations", parser_class=_Parser, dest="evaluation")
    for name, help_text in (
        ("grounding", "per-word (captioner) or per-answer (VQA) pointing against ground truth"),
        ("faithfulness", "occlusion rank correlation, deletion/insertion AUC, ROAD"),
        ("sanity", "cascading model-parameter randomisation (Adebayo et al. 2018)"),
        ("localization", "the paper's weakly-supervised localization (15%% of max, largest segment, IoU >= 0.5)"),
    ):
        sub = evaluations.add_parser(name, help=help_text)
        sub.add_argument("--model", required=True, help="any model (shipped, timm/torchvision name, hf:PATH); without --data: shapes-captioner or easy-vqa")
        sub.add_argument("--data", metavar="FILE.jsonl", help="your items, one JSON object per line: {\"image\": P} plus \"caption\" or \"question\"/\"answer\"; grounding and localization: \"boxes\" (see README)")
        sub.add_argument("--limit", type=_positive_int, help="evaluate at most N scenes / questions / items")
        sub.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
        sub.add_argument("--tolerance", type=int, default=6, help="pixels a box grows by for pointing (captioner)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        sub.add_argument("--layer", help=argparse.SUPPRESS)
        if name == "faithfulness":
            sub.add_argument("--no-road", action="store_true", help="skip ROAD (its imputation is the slowest part)")
        if name == "localization":
            sub.add_argument("--boxes", help="dataset of images with boxes (JSON lines or CSV) for a classifier")
        sub.set_defaults(run=_run_eval)


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive")


def _int_at_least(text: str, minimum: int, which: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {which} integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {which} integer, got {value}")
    return value


def _add_demo(commands) -> None:
    command = commands.add_parser("demo", help="explain bundled sample images with the shipped models")
    command.add_argument("--out", default="mmcam-demo", help="output folder (default: mmcam-demo)")
    command.set_defaults(run=_run_demo)


def _add_view(commands) -> None:
    command = commands.add_parser("view", help="write OUT/viewer.html: an offline, interactive viewer of a batch output")
    command.add_argument("out", metavar="OUT", help="the --out folder of a batch run (JSON records or a Parquet manifest)")
    command.add_argument("--boxes", metavar="FILE", help="ground-truth boxes (JSON lines or CSV, as for 'eval localization'): adds pointing")
    command.add_argument("--map-size", type=_positive_int, default=128, metavar="PX", help="longest side of the embedded maps (default 128)")
    command.set_defaults(run=_run_view)


def _run_view(args: argparse.Namespace) -> int:
    from .viewer import PackOptions, write_viewer

    path = write_viewer(args.out, boxes=args.boxes, options=PackOptions(map_side=args.map_size))
    print(f"mmcam view: wrote {path}")
    return 0


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
        stem = Path(url_path(source) or source).stem or "image"
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
        print(f"  {record['method']} for {item['target']!r}: {_peak(item)}, box {item['bbox']}{where}")


def _load_adapter(args: argparse.Namespace, kind: str):
    from .registry import load

    adapter = load(args.model, weights=getattr(args, "weights", None), layer=args.layer, task=kind)
    if getattr(adapter, "kind", None) != kind:
        raise InputError(f"model {args.model!r} is a {adapter.kind} model; use 'mmcam {adapter.kind}'")
    return adapter


def _check_sources(args: argparse.Namespace) -> None:
    if args.batch and args.images:
        raise InputError("give images on the command line or --batch FILE, not both")
    if not args.batch and not args.images:
        raise InputError("no images given; pass IMAGE ... or --batch FILE.jsonl")
    if args.resume and not (args.batch and args.out):
        raise InputError("--resume needs --batch and --out")


def _run_caption(args: argparse.Namespace) -> int:
    from .batch import read_batch, run_batch
    from .records import caption_record

    _check_sources(args)
    _check_dataset_options(args)
    if args.format == "parquet":
        return _run_dataset(args, "caption")
    if args.batch:
        items = read_batch(args.batch, optional=("caption",))
        adapter = _load_adapter(args, "caption")
    else:
        images = load_images(args.images)
        adapter = _load_adapter(args, "caption")
        if args.caption is not None:
            adapter.caption_tokens(images[0], args.caption)
        items = [_item(path, image, {"caption": args.caption}) for path, image in zip(args.images, images)]
    out = prepare_out(args.out)

    def explain_group(group, stems):
        explanations = adapter.explain_batch(
            [_loaded(item) for item in group],
            [item.fields.get("caption") for item in group],
            words=args.words,
            method=args.method,
            beam_size=args.beam,
            score=args.score,
            guided=out is not None,
            counterfactual=out is not None,
            contrast=out is not None,
        )
        return [
            caption_record(explanation, item.image, explanation.save(out, stem) if out else None)
            for item, stem, explanation in zip(group, stems, explanations, strict=True)
        ]

    def explain(batch, stems):
        return _records_or_errors(explain_group, batch, stems, isolate=bool(args.batch))

    printer = emit if args.json else _print_caption
    settings = _settings("caption", args, ("caption", "words", "score", "beam"))
    stems = unique_stems([item.image for item in items])
    return run_batch(items, stems, explain, printer, out=out, resume=args.resume, settings=settings, chunk=args.batch_size)


def _run_vqa(args: argparse.Namespace) -> int:
    from .batch import read_batch, run_batch
    from .records import vqa_record

    args.images = args.inputs
    if args.inputs and len(args.inputs) != 2:
        raise InputError("give exactly IMAGE QUESTION (quote the question), or --batch FILE.jsonl")
    _check_sources(args)
    if args.answer and args.top != 1:
        raise InputError("give --answer or --top, not both")
    _check_dataset_options(args)
    if args.format == "parquet":
        return _run_dataset(args, "vqa")
    if args.batch:
        items = read_batch(args.batch, required=("image", "question"), optional=("answer",))
        adapter = _load_adapter(args, "vqa")
    else:
        path, question = args.inputs
        (image,) = load_images([path])
        adapter = _load_adapter(args, "vqa")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown words are warned about once, by the run below
            adapter.question_tokens(question)
        items = [_item(path, image, {"question": question})]
    for answer in [*(args.answer or []), *(args.contrast or [])]:
        adapter.answer_index(answer)
    out = prepare_out(args.out)

    def answers_of(item) -> list[str] | None:
        given = item.fields.get("answer")
        return [given] if given else args.answer

    def explain_group(group, stems):
        explanations = adapter.explain_batch(
            [_loaded(item) for item in group],
            [item.fields["question"] for item in group],
            [answers_of(item) for item in group],
            top=args.top,
            method=args.method,
            guided=out is not None,
            counterfactual=out is not None,
            contrast=tuple(args.contrast) if args.contrast and out is not None else None,
        )
        return [
            vqa_record(explanation, item.image, explanation.save(out, stem) if out else None)
            for item, stem, explanation in zip(group, stems, explanations, strict=True)
        ]

    def explain(batch, stems):
        results: list = [None] * len(batch)
        by_count: dict[int, list[int]] = {}
        for position, item in enumerate(batch):
            by_count.setdefault(len(answers_of(item) or [None] * args.top), []).append(position)
        for positions in by_count.values():
            group = [batch[p] for p in positions]
            records = _records_or_errors(explain_group, group, [stems[p] for p in positions], isolate=bool(args.batch))
            for position, record in zip(positions, records, strict=True):
                results[position] = record
        return results

    printer = emit if args.json else _print_vqa
    settings = _settings("vqa", args, ("answer", "top", "contrast"))
    stems = unique_stems([item.image for item in items])
    return run_batch(items, stems, explain, printer, out=out, resume=args.resume, settings=settings, chunk=args.batch_size)


def _settings(command: str, args: argparse.Namespace, options: Sequence[str]) -> dict[str, Any]:
    """What shapes a command's records: saved with each, so that --resume redoes an item when
    it changed."""
    from . import __version__

    names = ("model", "weights", "layer", "method", *options)
    return {"command": command, "mmcam": __version__, **{name: getattr(args, name) for name in names}}


def _records_or_errors(explain_group, group, stems, *, isolate: bool) -> list:
    """``explain_group(group, stems)``'s records; with ``isolate`` (a --batch run), a failing
    minibatch is redone item by item so that one bad item becomes its own error and the rest
    still succeed. Without it the error propagates (one-line CLI error)."""
    try:
        return explain_group(group, stems)
    except Exception as error:  # in a batch, one bad item must not stop the rest
        if not isolate:
            raise
        if len(group) == 1:
            return [error]
        return [_first_or_error(explain_group, [item], [stem]) for item, stem in zip(group, stems, strict=True)]


def _first_or_error(function, *arguments):
    try:
        return function(*arguments)[0]
    except Exception as error:  # reported as this item's error line
        return error


def _print_vqa(record: dict[str, Any]) -> None:
    if "error" in record:
        print(f"{record['image']}: error: {record['error']}")
        return
    print(f"{record['image']}: {record['question']!r} -> {record['answer']} (p={record['probability']:.3f})")
    for item in record["explanations"]:
        where = f" -> {item['heatmap']}" if item["heatmap"] else ""
        print(f"  {record['method']} for {item['answer']!r}: score {item['score']:.3f}, {_peak(item)}, box {item['bbox']}{where}")
    words = ", ".join(f"{w['word']} {w['attribution']:+.3f}" for w in record["question_words"] if w["attribution"] is not None)
    print(f"  question words: {words}")


def _loaded(item) -> LoadedImage:
    """A batch item's image, loaded here so that its conversion notes are warned about as for
    images on the command line."""
    return item.fields.get("loaded") or load_images([item.image])[0]


def _item(path: str, image: LoadedImage, fields: dict[str, Any]):
    from .batch import BatchItem

    return BatchItem(0, path, {**fields, "loaded": image})


def _print_caption(record: dict[str, Any]) -> None:
    if "error" in record:
        print(f"{record['image']}: error: {record['error']}")
        return
    print(f"{record['image']}: {record['caption']!r} ({record['method']} on {record['layer']})")
    for word in record["words"]:
        where = f" -> {word['heatmap']}" if word["heatmap"] else ""
        print(f"  {word['word']:<12} logprob {word['logprob']:7.3f}  {_peak(word)}  box {word['bbox']}{where}")


def _peak(entry: dict[str, Any]) -> str:
    """``peak (x, y)`` of one explained target, or why there is none."""
    if entry["peak_xy"] is None:
        return "no peak (all-zero map)"
    x, y = entry["peak_xy"]
    return f"peak ({x}, {y})"


def _run_eval(args: argparse.Namespace) -> int:
    from .eval.runner import run_evaluation

    result = run_evaluation(
        args.evaluation,
        args.model,
        limit=args.limit,
        methods=args.methods,
        tolerance=args.tolerance,
        seed=args.seed,
        show_progress=not args.quiet,
        boxes=getattr(args, "boxes", None),
        with_road=not getattr(args, "no_road", False),
        data=args.data,
    )
    if args.json:
        emit(result)
    else:
        from .eval.runner import markdown

        print(markdown(result))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    index = run_demo(prepare_out(args.out))
    print(f"mmcam demo: wrote {index}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
