"""Pictures: a prediction overlay (instances, boxes, scores, the sentence, a no-target
banner) and a run's training curves.

Legend: H x W image size, K instances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refseg.data.types import RefResult
from refseg.io.atomic import atomic_path

# Distinct, saturated colours (Tableau 10), one per instance in turn.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
NO_TARGET_RED = (200, 30, 30)
MERGED_ONLY_WHITE = (255, 255, 255)  # merged-mask pixels no kept instance covers
MIN_WIDTH = 384  # smaller pictures are enlarged (nearest) so that the text stays legible
MAX_ZOOMED_SIDE = 4096  # ... but never beyond this (a 400 x 2 picture is not made 76,800 tall)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _tint(canvas: np.ndarray, mask: np.ndarray, colour, alpha: float) -> None:
    """Blend ``colour`` into ``canvas`` (H, W, 3 float) where ``mask`` (H, W) is set."""
    canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(colour, dtype=np.float32)


def overlay(image: np.ndarray, result: RefResult, sentence: str, *, alpha: float = 0.5):
    """An overlay picture of one prediction.

    Each instance is tinted in its own colour with its box and score, and merged-mask
    pixels that no instance covers in white; without instances the merged mask is
    tinted. A header above the image holds the sentence, and a red "NO TARGET" banner
    when the model decided that nothing is referred to. Pictures
    narrower than `MIN_WIDTH` are enlarged by an integer factor first (up to a side of
    `MAX_ZOOMED_SIDE`); one still narrower sits centred below a header `MIN_WIDTH` wide.

    Args:
        image: (H, W, 3) uint8, the picture the result was computed on.
        result: the prediction at (H, W).
        sentence: the referring expression.

    Returns:
        A PIL RGB image of size (k H + header) x max(k W, `MIN_WIDTH`), k the enlargement
        factor.
    """
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    zoom = max(1, min(-(-MIN_WIDTH // w), MAX_ZOOMED_SIDE // h))  # ceil; 1 if wide enough
    canvas = _enlarge(image, zoom).astype(np.float32)
    merged = np.asarray(result.mask, bool) if not result.no_target else np.zeros((h, w), bool)
    if result.instances:
        covered = np.zeros((h, w), bool)
        for k, inst in enumerate(result.instances):
            if inst.mask is not None:
                covered |= np.asarray(inst.mask, bool)
                mask = _enlarge(np.asarray(inst.mask, bool), zoom)
                _tint(canvas, mask, PALETTE[k % len(PALETTE)], alpha)
        # The merged mask (what the JSON's "mask" holds) beyond every instance, in white.
        _tint(canvas, _enlarge(merged & ~covered, zoom), MERGED_ONLY_WHITE, alpha)
    else:
        _tint(canvas, _enlarge(merged, zoom), PALETTE[0], alpha)
    picture = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    size = max(12, min(picture.width, 1600) // 40)
    font = _font(size)
    draw = ImageDraw.Draw(picture)
    for k, inst in enumerate(result.instances):
        colour = PALETTE[k % len(PALETTE)]
        x1, y1, x2, y2 = (v * zoom for v in inst.box)
        corners = (x1, y1, max(x1, x2 - 1), max(y1, y2 - 1))  # x2, y2 are pixel edges
        draw.rectangle(corners, outline=colour, width=max(2, size // 6))
        label = f"{inst.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        y = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
        box = draw.textbbox((x1 + 2, y), label, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=colour)
        draw.text((x1 + 2, y), label, fill=(255, 255, 255), font=font)
    return _with_header(picture, result, sentence, font, size)


def _enlarge(array: np.ndarray, zoom: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W[, C]) array by an integer factor."""
    if zoom == 1:
        return array
    return array.repeat(zoom, axis=0).repeat(zoom, axis=1)


def _wrap(text: str, font, width: float, max_lines: int = 3) -> list[str]:
    """Greedy word wrap by the font's measured text length (a word wider than a line is cut
    across lines); an ellipsis past max_lines."""
    lines: list[str] = []
    for word in text.split():
        if len(lines) > max_lines:
            break
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while len(word) > 1 and font.getlength(word) > width and len(lines) <= max_lines:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    return lines or [""]


def _with_header(picture, result: RefResult, sentence: str, font, size: int):
    from PIL import Image, ImageDraw

    width = max(picture.width, MIN_WIDTH)  # a picture kept narrow is centred under the text
    lines = _wrap(f'"{sentence}"', font, width - size)
    line_h = size + size // 3
    banner_h = line_h + size // 2 if result.no_target else 0
    header_h = banner_h + len(lines) * line_h + size // 2
    out = Image.new("RGB", (width, picture.height + header_h), (255, 255, 255))
    out.paste(picture, ((width - picture.width) // 2, header_h))
    draw = ImageDraw.Draw(out)
    if result.no_target:
        draw.rectangle((0, 0, width, banner_h), fill=NO_TARGET_RED)
        text = f"NO TARGET (p={result.no_target_score:.2f})"
        draw.text((size // 2, size // 4), text, fill=(255, 255, 255), font=font)
    for i, line in enumerate(lines):
        draw.text((size // 2, banner_h + size // 4 + i * line_h), line, fill=(0, 0, 0), font=font)
    return out


def save_overlay(path: str | Path, image: np.ndarray, result: RefResult, sentence: str) -> Path:
    """Write `overlay` as a PNG (atomically)."""
    picture = overlay(image, result, sentence)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)


def plot_curves(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Training losses and validation metrics of a run's metrics.jsonl as one PNG.

    Returns:
        The PNG path, or None when the log holds no training entry yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from refseg.engine.runlog import read_log

    entries = read_log(log_path)
    train = [e for e in entries if "train" in e]
    val = [e for e in entries if "val" in e]
    if not train:
        return None
    fig = Figure(figsize=(11 if val else 6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if val else 1, 1)
    keys = [k for k in train[-1]["train"] if k not in ("lr", "samples_per_s")]
    for key in keys:
        points = [(e["iteration"], e["train"][key]) for e in train if key in e["train"]]
        ax.plot(*zip(*points), label=key, linewidth=2.0 if key == "loss" else 1.0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_yscale("log" if all(e["train"].get("loss", 1) > 0 for e in train) else "linear")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if val:
        ax2 = fig.add_subplot(1, 2, 2)
        for key in val[-1]["val"]:
            points = [(e["iteration"], e["val"][key]) for e in val if key in e["val"]]
            ax2.plot(*zip(*points), marker="o", label=key)
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("validation (%)")
        ax2.legend(fontsize=7)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_path)
