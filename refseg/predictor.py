"""The stateful predictor: image + sentence -> `RefResult`, for any trained refseg model.

    model = refseg.load("runs/demo")            # a checkpoint or a run directory
    result = model.predict("cat.jpg", "the two cats on the left")
    result.no_target, result.no_target_score, result.mask, result.instances

Pre-processing, tokenisation, decision thresholds and post-processing live here, outside
the `nn.Module`. Thresholds are those saved in the checkpoint unless overridden per call.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from refseg.data.types import RefResult
from refseg.errors import ConfigError, DataError
from refseg.modeling.base import Thresholds
from refseg.modeling.text.tokenizers import Tokenized


def merge_thresholds(base: Thresholds, override: Thresholds | dict | None,
                     used: Sequence[str] | None = None) -> Thresholds:
    """``base`` with the fields of ``override`` (a `Thresholds` or a partial dict) applied;
    a key the model does not read (not in ``used``, its ``threshold_keys``) is applied with
    a warning, since it changes nothing."""
    if override is None:
        return base
    if isinstance(override, Thresholds):
        return override.check()
    if not isinstance(override, Mapping):
        raise ConfigError(f"thresholds: expected a dict such as {{'no_target': 0.7}} or a "
                          f"Thresholds, got {type(override).__name__} {override!r:.40}")
    known = {f.name for f in dataclasses.fields(Thresholds)}
    unknown = set(override) - known
    if unknown:
        raise ConfigError(
            f"thresholds: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})"
        )
    merged = dataclasses.replace(base, **override).check()
    for key in sorted(set(override) - set(used if used is not None else known)):
        warnings.warn(f"thresholds: this model does not use the {key!r} threshold "
                      f"(it reads {', '.join(used)}); the override changes nothing")
    return merged


def _describe(image: Any, index: int) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return f"image {index} ({type(image).__name__})"


class Predictor:
    """A trained model ready for prediction.

    Args:
        model: the method's `RefSegModel` with its weights.
        tokenizer: its tokenizer.
        config: the run config it was trained with (image size, AMP).
        thresholds: the saved decision thresholds.
        device: where the model runs.
        source: the checkpoint it came from (for messages).
    """

    def __init__(
        self,
        model,
        tokenizer,
        config,
        thresholds: Thresholds,
        device: torch.device,
        source: Path | None = None,
    ):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.thresholds = thresholds
        self.device = device
        self.source = source

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    def predict(
        self, image: Any, sentence: str, *, thresholds: Thresholds | dict | None = None
    ) -> RefResult:
        """One image and one sentence.

        Args:
            image: a path, a PIL image or an (H, W, 3) array (uint8, or 16-bit / float /
                grey / RGBA as `refseg.io.images.load_image` accepts).
            sentence: the referring expression (an empty one is an error; one longer than
                the model's text length is truncated with a warning).
            thresholds: per-call overrides, e.g. ``{"no_target": 0.7}``.

        Returns:
            `RefResult` with the mask and instance masks at the image's size (as displayed,
            i.e. after its EXIF orientation).
        """
        return self.predict_batch([image], [sentence], thresholds=thresholds)[0]

    def predict_batch(
        self,
        images: Sequence[Any],
        sentences: Sequence[str] | str,
        *,
        thresholds: Thresholds | dict | None = None,
        batch_size: int = 8,
    ) -> list[RefResult]:
        """Many (image, sentence) pairs; one sentence may be given for all images.

        ``images`` is a list (or any iterable) of what `predict` takes; one image on its own
        is refused rather than read as a sequence of rows."""
        if isinstance(images, (str, Path, np.ndarray, Image.Image)):
            raise DataError(f"predict_batch: images must be a list of images, got one "
                            f"{type(images).__name__} (use predict for a single image)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"predict_batch: batch_size must be a positive integer, "
                              f"got {batch_size!r}")
        try:
            images = list(images)
            sentences = [sentences] * len(images) if isinstance(sentences, str) else list(sentences)
        except TypeError:  # None, a number: not a sequence
            raise DataError(f"predict_batch: images and sentences must be lists, got "
                            f"{type(images).__name__} and {type(sentences).__name__}") from None
        if len(sentences) != len(images):
            raise DataError(f"predict_batch: {len(images)} images but {len(sentences)} sentences")
        chosen = merge_thresholds(self.thresholds, thresholds, self.model.threshold_keys)
        tokens = self.tokenizer.encode(sentences)  # every sentence checked before any image
        results = []
        for start in range(0, len(images), batch_size):
            part = slice(start, min(start + batch_size, len(images)))
            pixels = [self.load_pixels(images[k], k) for k in range(len(images))[part]]
            chunk = Tokenized(tokens.input_ids[part], tokens.pad_mask[part], tokens.truncated[part])
            results += self.predict_pixels(pixels, sentences[part], chosen, tokens=chunk)
        return results

    def load_pixels(self, image: Any, index: int = 0) -> np.ndarray:
        """(H, W, 3) uint8 of an image given as a path, a PIL image or an array."""
        from refseg.io.images import load_image

        return load_image(image, where=_describe(image, index))

    def predict_pixels(
        self, pixels: list[np.ndarray], sentences: list[str], thresholds: Thresholds, *,
        tokens: Tokenized | None = None,
    ) -> list[RefResult]:
        """The model on already loaded (H, W, 3) uint8 images; ``tokens``: the sentences
        already encoded, if the caller has them."""
        from refseg.engine.data import preprocess_image, warn_truncated
        from refseg.engine.evaluate import run_model
        from refseg.modeling.contracts import Batch

        if tokens is None:
            tokens = self.tokenizer.encode(list(sentences))
        warn_truncated(sentences, tokens.truncated.tolist(), self.tokenizer.max_length)
        batch = Batch(
            images=torch.stack([preprocess_image(p, self.image_size) for p in pixels]),
            input_ids=tokens.input_ids,
            text_pad_mask=tokens.pad_mask,
        ).to(self.device)
        sizes = [p.shape[:2] for p in pixels]
        return run_model(self.model, batch, sizes, thresholds, amp=self.config.train.amp)


def load(checkpoint: str | Path, device: str | torch.device | None = None) -> Predictor:
    """A `Predictor` from a checkpoint directory, or a run directory (its best, else last).

    Args:
        checkpoint: the checkpoint or run directory.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).

    Raises:
        CheckpointError: missing, truncated or corrupt files, or weights of another model.
    """
    from refseg.engine import checkpoint as ckpt
    from refseg.engine.distributed import resolve_device

    where = resolve_device(str(device) if device is not None else "auto")
    loaded = ckpt.load(checkpoint, device=where)
    return Predictor(
        loaded.model, loaded.tokenizer, loaded.config, loaded.thresholds, where, loaded.path
    )


def parse_threshold_overrides(items: list[str] | None) -> dict[str, float]:
    """``["no_target=0.7", "mask=0.4"]`` (the CLI's ``--threshold``) -> a dict."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"--threshold {item!r}: expected KEY=NUMBER, e.g. no_target=0.7"
            ) from None
    merge_thresholds(Thresholds(), out)  # checks the keys and ranges
    return out
