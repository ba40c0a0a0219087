"""Non-referent sample conversion (DeRIS NSC): filters (with the synthetic benchmark's scene
check), probability, determinism."""

import math

import numpy as np
import pytest

from refseg.data.load import load_split
from refseg.data.nsc import NonReferentConversion, jaccard, text_similarity
from refseg.data.synth import generate, scene_refers
from refseg.data.types import Sample


def sample(image_id=1, sentence="the red car", ann_ids=(5,), no_target=False, sent_id=7):
    return Sample(
        sent_id=sent_id, ref_id=3, image_id=image_id, sentence=sentence, ann_ids=ann_ids,
        split="train", no_target=no_target,
    )


def test_similarity_hand_computed():
    # {the, red, car} vs {a, red, car, on, the, left}: Jaccard 3/6, cosine 3/sqrt(3*6).
    expected = 0.5 * (3 / 6 + 3 / math.sqrt(18))
    assert text_similarity("the red car", "a red car on the left") == pytest.approx(expected)
    assert expected == pytest.approx(0.6036, abs=1e-4)
    # Repeated words: sets are equal (Jaccard 1), counts differ: cosine (2+2)/(sqrt5*sqrt5).
    assert text_similarity("dog dog cat", "dog cat cat") == pytest.approx(0.5 * (1 + 4 / 5))
    # Case and punctuation are normalised away; disjoint sentences score 0.
    assert text_similarity("The Man.", "the man") == pytest.approx(1.0)
    assert text_similarity("left zebra", "giant blue boat") == 0.0
    assert jaccard([], []) == 0.0


def test_filter_other_image():
    # Only the sample's own image offers (dissimilar, long) sentences: never converted.
    pool = [(1, "giant blue boat far away"), (1, "small green kite up high")]
    nsc = NonReferentConversion(pool, p=1.0)
    for i in range(20):
        assert nsc(sample(), index=i) == sample()
    # With one other image in the pool, every conversion takes its sentence.
    nsc = NonReferentConversion(pool + [(2, "woman holding an umbrella")], p=1.0)
    for i in range(20):
        assert nsc(sample(), index=i).sentence == "woman holding an umbrella"


def test_filter_length():
    short = [(2, "blue boat"), (3, "umbrella")]  # fewer than 3 words
    nsc = NonReferentConversion(short, p=1.0, min_words=3)
    assert all(nsc(sample(), index=i) == sample() for i in range(20))
    nsc = NonReferentConversion(short + [(4, "big blue boat")], p=1.0, min_words=3)
    assert all(nsc(sample(), index=i).sentence == "big blue boat" for i in range(20))


def test_filter_similarity():
    close = [(2, "a red car on the left")]  # similarity 0.6036 >= 0.6: rejected
    nsc = NonReferentConversion(close, p=1.0)
    assert all(nsc(sample(), index=i) == sample() for i in range(20))
    # A looser threshold admits it.
    nsc = NonReferentConversion(close, p=1.0, max_similarity=0.61)
    assert nsc(sample(), index=0).sentence == "a red car on the left"
    nsc = NonReferentConversion(close + [(3, "man on a horse")], p=1.0)
    assert all(nsc(sample(), index=i).sentence == "man on a horse" for i in range(20))


def test_filter_refers():
    pool = [(2, "man on a horse"), (3, "woman holding an umbrella")]
    asked = []

    def refers(image_id, sentence):  # the sample's image holds a man on a horse
        asked.append(image_id)
        return sentence == "man on a horse"

    nsc = NonReferentConversion(pool, p=1.0, refers=refers)
    assert all(nsc(sample(), index=i).sentence == "woman holding an umbrella" for i in range(20))
    assert set(asked) == {1}  # asked about the sample's own image, never the candidate's
    nsc = NonReferentConversion(pool[:1], p=1.0, refers=refers)
    assert all(nsc(sample(), index=i) == sample() for i in range(20))  # nothing passes


def test_synthetic_scenes_keep_conversions_true(tmp_path):
    """On the synthetic benchmark a converted sentence refers to nothing in its new image
    with the scene check, and without it some conversions would be wrong."""
    data = generate(tmp_path, images=60, size=64, seed=2)
    split = load_split("grefcoco", data, "train", images=data / "images")
    refers = scene_refers(data)
    assert refers is not None and scene_refers(tmp_path / "elsewhere") is None
    # it agrees with the annotations: an image's own sentences refer unless no-target
    assert all(refers(s.image_id, s.sentence) != s.no_target for s in split.samples)
    assert refers(10**6, split.samples[0].sentence) and refers(1, "a sentence of no grammar")
    wrong = {}
    for check in (None, refers):
        nsc = NonReferentConversion.from_samples(split.samples, p=1.0, seed=5, refers=check)
        converted = [nsc(s, index=i) for i, s in enumerate(split.samples) if not s.no_target]
        converted = [c for c in converted if c.no_target]
        assert len(converted) > 100
        wrong[check is None] = sum(refers(c.image_id, c.sentence) for c in converted)
    assert wrong[False] == 0 and wrong[True] > 10


def test_converted_sample_fields():
    nsc = NonReferentConversion([(2, "man on a horse")], p=1.0)
    out = nsc(sample(ann_ids=(5, 6)), index=0)
    assert out.sentence == "man on a horse"
    assert out.ann_ids == () and out.no_target
    assert (out.sent_id, out.ref_id, out.image_id, out.split) == (7, 3, 1, "train")


def test_no_target_inputs_untouched():
    nsc = NonReferentConversion([(2, "man on a horse")], p=1.0)
    nt = sample(ann_ids=(), no_target=True)
    assert all(nsc(nt, index=i) is nt for i in range(20))
    # without drawing from the sample's generator
    rng = np.random.default_rng(4)
    before = rng.bit_generator.state
    assert nsc.convert(nt, rng) is nt
    assert rng.bit_generator.state == before


def test_probability_close_to_p():
    pool = [(2, "man on a horse"), (3, "woman holding an umbrella")]
    nsc = NonReferentConversion(pool, p=0.15, seed=11)
    n = 4000
    rate = sum(nsc(sample(), index=i).no_target for i in range(n)) / n
    assert abs(rate - 0.15) < 0.02  # ~3.5 standard deviations
    assert not any(NonReferentConversion(pool, p=0.0)(sample(), i).no_target for i in range(200))


def test_deterministic_and_order_independent():
    pool = [(k, f"object number {k} on the table") for k in range(2, 40)]
    a = NonReferentConversion(pool, p=0.5, seed=3)
    b = NonReferentConversion(pool, p=0.5, seed=3)
    forward = [a(sample(), index=i) for i in range(100)]
    backward = [b(sample(), index=i) for i in reversed(range(100))][::-1]
    assert forward == backward
    assert len({s.sentence for s in forward}) > 5  # it really varies over indices
    other_epoch = [a(sample(), index=i, epoch=1) for i in range(100)]
    assert other_epoch != forward
    other_seed = [NonReferentConversion(pool, p=0.5, seed=4)(sample(), i) for i in range(100)]
    assert other_seed != forward


def test_from_samples_pool():
    samples = [sample(1, "red car"), sample(2, "man on a horse")]
    nsc = NonReferentConversion.from_samples(samples, p=1.0)
    assert nsc(samples[0], index=0).sentence == "man on a horse"
    assert nsc(samples[1], index=0) == samples[1]  # "red car" is too short


def test_rejects_bad_probability():
    for p in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=rf"NSC probability {p} is not in \[0, 1\]"):
            NonReferentConversion([], p=p)
    for p in (0.0, 1.0):  # the bounds themselves are probabilities
        assert NonReferentConversion([], p=p).p == p
