"""Non-referent sample conversion (NSC, DeRIS Sec. 3.3): a data augmentation for any model.

With probability ``p`` a sample that refers to something gets the sentence of another
image instead, and its target becomes empty (no-target). A candidate sentence must pass
three filters: (1) it describes another image, (2) it has at least ``min_words`` words
(the paper: more than 2), (3) its similarity to the original is below
``max_similarity`` (0.6), similarity being the mean of the word-set Jaccard and the
bag-of-words cosine (DeRIS Eq. 6, Appendix D.1).

On real data the paper relies on another image's sentence not describing this one. A
dataset that can tell may pass ``refers(image_id, sentence)`` as a fourth filter: a
candidate that may refer to something in the sample's image is skipped. The synthetic
benchmark can (`refseg.data.synth.scene_refers`), and needs it: its scenes share a small
vocabulary of shapes and colours, so that of the candidates passing the first three
filters, 15 % refer to objects of the sample's image and 13 % are ambiguous there (the
training split of 5,000 images at 64 px, docs/nsc.md).

Candidates are drawn as in the released code: a uniformly random other image, then a
uniformly random sentence of it, up to ``max_tries`` (50) draws; when none passes, the
sample is left unchanged. Randomness comes from a generator seeded by
``(seed, epoch, index)``, so a sample's fate does not depend on worker scheduling.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np

from refseg.data.text import words
from refseg.data.types import Sample


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| of the word sets (DeRIS Eq. 9); 0 when both are empty."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def cosine(a: Counter, b: Counter) -> float:
    """Cosine of the word-count vectors (DeRIS Eq. 10); 0 when either is empty."""
    dot = sum(n * b[w] for w, n in a.items())
    norm = math.sqrt(sum(n * n for n in a.values()) * sum(n * n for n in b.values()))
    return dot / norm if norm else 0.0


def word_similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """DeRIS Eq. 11: mean of word-set Jaccard and bag-of-words cosine of two word lists."""
    return 0.5 * (jaccard(a, b) + cosine(Counter(a), Counter(b)))


def text_similarity(a: str, b: str) -> float:
    """`word_similarity` of two sentences (lower-cased, punctuation dropped)."""
    return word_similarity(words(a), words(b))


class NonReferentConversion:
    """NSC augmentation over a pool of (image_id, sentence) pairs.

    Args:
        pool: candidate sentences with the image they describe (usually every training
            sentence; see `from_samples`).
        p: probability of converting a sample that has a target.
        max_similarity: a candidate must be strictly less similar than this.
        min_words: a candidate must have at least this many words.
        max_tries: candidate draws before giving up on a sample.
        seed: base seed; a sample's generator is seeded by (seed, epoch, index).
        refers: optional fourth filter, ``refers(image_id, sentence)`` True when the
            sentence may refer to something in that image (the candidate is skipped).
    """

    def __init__(
        self,
        pool: Sequence[tuple[int, str]],
        *,
        p: float = 0.15,
        max_similarity: float = 0.6,
        min_words: int = 3,
        max_tries: int = 50,
        seed: int = 0,
        refers: Callable[[int, str], bool] | None = None,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"NSC probability {p} is not in [0, 1]")
        self.p = p
        self.max_similarity = max_similarity
        self.min_words = min_words
        self.max_tries = max_tries
        self.seed = seed
        self.refers = refers
        by_image: dict[int, list[str]] = {}
        for image_id, sentence in pool:
            by_image.setdefault(int(image_id), []).append(sentence)
        self._image_ids = sorted(by_image)
        self._sentences = [by_image[i] for i in self._image_ids]
        self._slot = {image_id: k for k, image_id in enumerate(self._image_ids)}

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], **kwargs) -> "NonReferentConversion":
        """A pool of every sample's (image_id, sentence)."""
        return cls([(s.image_id, s.sentence) for s in samples], **kwargs)

    def __call__(self, sample: Sample, index: int, epoch: int = 0) -> Sample:
        """The sample, converted with probability p; deterministic in (seed, epoch, index)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        return self.convert(sample, rng)

    def convert(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """The sample, converted with probability p using ``rng``.

        No-target samples are returned unchanged (without consuming randomness).
        """
        if sample.no_target or not sample.ann_ids:
            return sample
        if rng.random() >= self.p:
            return sample
        sentence = self.draw_sentence(sample, rng)
        if sentence is None:
            return sample
        return dataclasses.replace(sample, sentence=sentence, ann_ids=(), no_target=True)

    def draw_sentence(self, sample: Sample, rng: np.random.Generator) -> str | None:
        """A pool sentence passing the filters, or None after ``max_tries`` draws."""
        own = self._slot.get(sample.image_id)
        others = len(self._image_ids) - (own is not None)
        if others == 0:
            return None
        original = words(sample.sentence)
        for _ in range(self.max_tries):
            slot = int(rng.integers(others))
            if own is not None and slot >= own:  # skip the sample's own image (filter 1)
                slot += 1
            choices = self._sentences[slot]
            candidate = choices[int(rng.integers(len(choices)))]
            cand = words(candidate)
            if len(cand) < self.min_words:  # filter 2
                continue
            if word_similarity(original, cand) >= self.max_similarity:  # filter 3
                continue
            if self.refers is not None and self.refers(sample.image_id, candidate):  # 4
                continue
            return candidate
        return None
