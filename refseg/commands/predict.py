"""`refseg predict CHECKPOINT --image PATH_OR_FOLDER --text "..." --out DIR`.

For each image: ``<stem>.json`` (no-target decision and score, the merged mask and the
instances' masks as COCO RLE, boxes, scores) and ``<stem>.png`` (an overlay). A folder is
processed with a progress bar; an unreadable image there is reported and skipped, and the
command then exits with status 2.
"""

from __future__ import annotations

import argparse

from refseg.commands.arguments import positive_int
from refseg.commands.eval import CHECKPOINT_HELP, THRESHOLD_HELP

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm", ".avif"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--image", required=True, help="an image file or a folder of images")
    parser.add_argument("--text", required=True, help="the referring expression")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", action="append", metavar="KEY=VALUE", help=THRESHOLD_HELP)
    parser.add_argument("--no-overlay", action="store_true", help="write only the JSON files")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="N")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true")


def list_images(path) -> list:
    """The image itself, or the folder's image files (by suffix, sorted)."""
    from pathlib import Path

    from refseg.errors import DataError

    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such image or folder")
    # A broken link is listed too, so that it is reported as unreadable, not skipped unseen.
    found = sorted(p for p in path.iterdir() if (p.is_file() or p.is_symlink() and not p.exists())
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"{path}: no image files in this folder ({suffixes})")
    stems: dict[str, object] = {}
    for p in found:  # case-insensitively: A.json and a.json are one file on macOS or Windows
        if p.stem.lower() in stems:
            raise DataError(
                f"{path}: {stems[p.stem.lower()]} and {p.name} would write the same {p.stem}.json"
            )
        stems[p.stem.lower()] = p.name
    return found


def check_outputs(images: list, out, overlay: bool) -> None:
    """Refuse, before any work, an output folder where a written file would replace an input
    image (``--out`` = the images' folder and an image named ``<stem>.png``)."""
    from pathlib import Path

    from refseg.errors import DataError
    from refseg.io.atomic import check_output

    out = check_output(out, folder=True)
    suffixes = (".json", ".png") if overlay else (".json",)
    # Compared case-folded: on macOS or Windows a.PNG and the overlay a.png are one file.
    inputs = {str(Path(p).resolve()).casefold() for p in images}
    for image in images:
        for suffix in suffixes:
            target = (out / f"{Path(image).stem}{suffix}").resolve()
            if str(target).casefold() in inputs:
                raise DataError(f"{target}: the output would overwrite the input image "
                                f"{image}; give another --out folder")


def result_record(image, sentence: str, result, thresholds) -> dict:
    """The JSON written per image: a predictions-file record (masks as compressed COCO RLE
    at the image's size) without ``sent_id``, plus the image, sentence, size, no-target
    score and the thresholds used."""
    from dataclasses import asdict

    from refseg.io.predictions import prediction_from_result, prediction_to_json

    record = prediction_to_json(prediction_from_result(0, result))
    del record["sent_id"]
    height, width = result.mask.shape
    return {
        "image": str(image),
        "sentence": sentence,
        "height": int(height),
        "width": int(width),
        "no_target_score": float(result.no_target_score),
        "thresholds": asdict(thresholds),
        **record,
    }


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from refseg.errors import DataError
    from refseg.io.atomic import write_json
    from refseg.io.images import load_image
    from refseg.modeling.text.tokenizers import check_sentence
    from refseg.predictor import load, merge_thresholds, parse_threshold_overrides
    from refseg.visualize import save_overlay

    check_sentence(args.text, "--text")
    sentence = args.text
    overrides = parse_threshold_overrides(args.threshold)
    images = list_images(args.image)
    folder = Path(args.image).is_dir()
    check_outputs(images, args.out, overlay=not args.no_overlay)
    # A lone image is read before the checkpoint, so that a bad one fails at once.
    loaded = {} if folder else {images[0]: load_image(images[0], where=str(images[0]))}
    predictor = load(args.checkpoint, device=args.device)
    predictor.tokenizer.encode([sentence], ["--text"])  # no word of it known: before any output
    thresholds = merge_thresholds(predictor.thresholds, overrides,
                                  predictor.model.threshold_keys)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    quiet = args.no_progress or not folder
    bar = tqdm(total=len(images), unit="image", disable=quiet, dynamic_ncols=True)
    for start in range(0, len(images), args.batch_size):
        chunk, pixels = [], []
        for path in images[start : start + args.batch_size]:
            try:
                pixels.append(loaded.pop(path) if path in loaded else predictor.load_pixels(path))
                chunk.append(path)
            except DataError as exc:
                failures += 1
                bar.write(f"refseg predict: skipped: {exc}", file=sys.stderr)
                bar.update(1)
        if not chunk:
            continue
        results = predictor.predict_pixels(pixels, [sentence] * len(chunk), thresholds)
        for path, image, result in zip(chunk, pixels, results):
            record = result_record(path, sentence, result, thresholds)
            write_json(out / f"{path.stem}.json", record, indent=None)
            if not args.no_overlay:
                save_overlay(out / f"{path.stem}.png", image, result, sentence)
            bar.update(1)
    bar.close()
    written = len(images) - failures
    skipped = f"; {failures} unreadable image(s) skipped" if failures else ""
    print(f"{written} image(s) -> {out}{skipped}")
    return 2 if failures else 0
