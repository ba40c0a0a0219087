"""Data pipeline and post-processing: geometry, normalisation, batch order, NSC, decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_tinyfilm import WordTokenizer, synth

from refseg.data.load import load_split
from refseg.data.masks import rle_to_mask
from refseg.data.nsc import NonReferentConversion
from refseg.engine.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Collate,
    EpochBatches,
    RefSegData,
    preprocess_image,
    resize_masks,
)
from refseg.engine.postprocess import to_result, upsample_logits
from refseg.modeling.base import Decision, Thresholds


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    data = synth(tmp_path_factory.mktemp("data"))
    return load_split("grefcoco", data, "train", images=data / "images")


def test_preprocess_normalises_with_imagenet_statistics():
    image = np.zeros((10, 20, 3), np.uint8)
    image[..., 0] = 255
    x = preprocess_image(image, 8)
    assert x.shape == (3, 8, 8)
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
                -IMAGENET_MEAN[2] / IMAGENET_STD[2]]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)


def test_targets_at_network_size_map_back_onto_the_ground_truth(train_split):
    """Targets resized to S x S and post-processed back to H x W overlap the original
    masks almost exactly: the data and post-processing geometry agree."""
    data = RefSegData(train_split, 32)
    ious = []
    for index in range(8):
        sample = train_split.samples[index]
        item = data[index]
        info = train_split.image_info(sample)
        assert item.targets.masks.shape[1:] == (32, 32)
        assert item.targets.no_target == (not sample.ann_ids)
        assert (item.height, item.width) == (info.height, info.width)
        if sample.no_target:
            assert item.targets.masks.shape[0] == 0 and item.targets.boxes.shape == (0, 4)
            continue
        # the area fractions binarised: a confident prediction of the target at S x S
        merged = torch.where(item.targets.merged >= 0.5, 10.0, -10.0)  # logits
        decision = Decision(False, 0.0, merged, merged[None], torch.ones(1))
        result = to_result(decision, info.height, info.width, Thresholds())
        gt = rle_to_mask(train_split.merged_rle(sample))
        iou = (result.mask & gt).sum() / (result.mask | gt).sum()
        assert iou > 0.7, (sample.sentence, iou)  # a star's points are thinner than 1.5 px
        ious.append(iou)
        # boxes are normalised xyxy of the referents
        x1, y1, x2, y2 = train_split.instance_boxes(sample)[0]
        w, h = info.width, info.height
        expected = torch.tensor([x1 / w, y1 / h, x2 / w, y2 / h])
        assert torch.allclose(item.targets.boxes[0], expected)
    assert sum(ious) / len(ious) > 0.8, ious


def test_targets_of_a_wide_image_scale_x_by_its_width_and_y_by_its_height(tmp_path):
    """The synthetic images are square; on a 20 x 30 image (h x w) a swap of the two sides
    moves every box and mask. Hand-computed at S = 10: x shrinks by 3, y by 2."""
    from builders import IMAGES, rect_mask, tiny_benchmark, write_images

    data = tiny_benchmark("grefcoco", tmp_path)
    write_images(data / "images", IMAGES)
    split = load_split("grefcoco", data, "train", images=data / "images")
    index = next(i for i, s in enumerate(split.samples) if s.sent_id == 1)  # referents 11, 12
    item = RefSegData(split, 10)[index]
    assert (item.height, item.width) == (20, 30)
    # 11: (2, 2)-(10, 8); 12: (12, 4)-(24, 16), the box of its two rectangles
    expected = torch.tensor([[2 / 30, 2 / 20, 10 / 30, 8 / 20], [12 / 30, 4 / 20, 24 / 30, 16 / 20]])
    assert torch.allclose(item.targets.boxes, expected)
    # 11 covers rows 1..3 whole and columns 1..2 whole (columns 0 and 3 a third each)
    np.testing.assert_array_equal(item.targets.masks[0].bool().numpy(),
                                  rect_mask(10, 10, (1, 1, 3, 4)))
    rows, cols = item.targets.masks[1].nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 7, 4, 7)


def test_a_tiny_referent_stays_a_non_empty_target_at_network_size():
    masks = np.zeros((3, 480, 480), bool)
    masks[0, 100:103, 200:203] = True  # 3 x 3 pixels: a fifth of one 32-px cell at most
    masks[1, :240] = True  # large: resized as before
    small = resize_masks(masks, 32)
    assert small[0].sum() >= 1 and small[0].nonzero()[0].tolist() == [6, 13]
    assert small[1].sum() == 16 * 32 and small[1][:16].all()
    assert small[2].sum() == 0  # an empty mask stays empty


def test_collate_tokenises_and_keeps_sent_ids(train_split):
    data = RefSegData(train_split, 16)
    tokenizer = WordTokenizer.build(["the red"], max_length=5)
    batch, items = Collate(tokenizer)([data[0], data[1]])
    assert batch.images.shape == (2, 3, 16, 16)
    assert batch.input_ids.shape == batch.text_pad_mask.shape == (2, 5)
    assert batch.text_pad_mask.dtype == torch.bool
    assert batch.sent_ids == [train_split.samples[0].sent_id, train_split.samples[1].sent_id]
    assert len(batch.targets) == 2 and items[0].image is None


def test_epoch_batches_depend_only_on_seed_and_epoch_and_resume_mid_epoch():
    batches = EpochBatches(10, 3, seed=5)
    batches.set_epoch(2)
    full = list(batches)
    assert sorted(i for b in full for i in b) == list(range(10)) and len(full) == 4
    again = EpochBatches(10, 3, seed=5)
    again.set_epoch(2, start=2)
    assert list(again) == full[2:] and len(again) == 2
    batches.set_epoch(3)
    assert list(batches) != full


def test_epoch_batches_count_exactly_for_any_batch_size():
    assert EpochBatches(10, 10**400, seed=0).batches_per_epoch() == 1  # no float rounding
    assert EpochBatches(2**60 + 1, 2**59, seed=0).batches_per_epoch() == 3


def test_epoch_batches_shard_disjointly_with_wraparound_padding():
    shards = []
    for rank in range(3):
        b = EpochBatches(10, 2, seed=1, rank=rank, world_size=3)
        b.set_epoch(0)
        shards.append([i for batch in b for i in batch])
    assert [len(s) for s in shards] == [4, 4, 4]  # 10 padded to 12
    assert set().union(*shards) == set(range(10))
    single = EpochBatches(10, 2, seed=1)
    single.set_epoch(0)
    order = [i for batch in single for i in batch]
    assert shards[0][:3] == order[0:9:3]


def test_nsc_hook_converts_per_epoch_and_index_deterministically(train_split):
    nsc = NonReferentConversion.from_samples(train_split.samples, p=1.0, seed=3)
    data = RefSegData(train_split, 16, nsc=nsc)
    index = next(i for i, s in enumerate(train_split.samples) if s.ann_ids)
    item = data[index]
    assert item.targets.no_target and item.targets.masks.shape[0] == 0
    assert item.sentence != train_split.samples[index].sentence
    assert data[index].sentence == item.sentence  # same (epoch, index), same sentence
    positives = [i for i, s in enumerate(train_split.samples) if s.ann_ids]
    first = [data[i].sentence for i in positives]
    data.set_epoch(1)  # another epoch draws other sentences
    assert [data[i].sentence for i in positives] != first
    data.set_epoch(0)
    assert [data[i].sentence for i in positives] == first
    off = RefSegData(train_split, 16)
    assert off[index].sentence == train_split.samples[index].sentence


def test_upsample_is_bilinear_on_logits():
    logits = torch.tensor([[[0.0, 2.0]]])  # (1, 1, 2); output centres read x = 0, .25, .75, 1
    up = upsample_logits(logits, 1, 4)
    assert torch.allclose(up, torch.tensor([[[0.0, 0.5, 1.5, 2.0]]]).sigmoid(), atol=1e-6)
    # A weak peak next to a confident background: resizing the probabilities (0.88, 0.66,
    # 0.22, 0.00) would put the edge past the second pixel, the logits (2, -0.5, -5.5, -8)
    # put it where the losses trained it.
    weak = torch.tensor([[[2.0, -8.0]]])
    assert (upsample_logits(weak, 1, 4) >= 0.5).tolist() == [[[True, False, False, False]]]
    probs_resized = F.interpolate(weak[:, None].sigmoid(), size=(1, 4), mode="bilinear",
                                  align_corners=False)
    assert (probs_resized[:, 0] >= 0.5).tolist() == [[[True, True, False, False]]]
    assert upsample_logits(torch.zeros(0, 2, 2), 3, 3).shape == (0, 3, 3)


def test_to_result_thresholds_boxes_and_no_target():
    prob = torch.full((4, 4), -9.0)  # logits; 2.2 = probability 0.9
    prob[1:3, 0:2] = 2.2
    other = torch.full((4, 4), -9.0)
    decision = Decision(False, 0.2, prob, torch.stack([prob, other]), torch.tensor([0.8, 0.6]))
    result = to_result(decision, 4, 4, Thresholds())
    assert result.mask.sum() == 4 and result.mask[1:3, 0:2].all()
    # the second instance has an empty mask and no model box: it is no instance
    assert len(result.instances) == 1
    assert result.instances[0].box == (0.0, 1.0, 2.0, 3.0)
    assert result.instances[0].score == pytest.approx(0.8)
    # model boxes (normalised xyxy) are scaled to pixels and kept even with empty masks
    box = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    boxed = Decision(False, 0.2, prob, other[None], torch.tensor([0.7]), box)
    inst = to_result(boxed, 4, 8, Thresholds()).instances
    assert inst[0].box == (2.0, 2.0, 6.0, 4.0)
    nothing = to_result(Decision(True, 0.9, prob, prob[None], torch.ones(1)), 4, 4, Thresholds())
    assert nothing.no_target and not nothing.mask.any() and nothing.instances == []
    strict = to_result(decision, 4, 4, Thresholds(mask=0.95))
    assert not strict.mask.any()


def test_a_probability_equal_to_the_mask_threshold_is_foreground_only_for_non_strict_models():
    zero = torch.zeros(4, 4)  # probability exactly 0.5 everywhere
    # InstAlign (strict, sigmoid(M) > 0.5): an all-zero logit map, as fp16 gives when every
    # relevance underflows to 0, is an empty mask, not the whole image.
    instalign = Decision(False, 0.1, zero, zero[None], torch.tensor([0.9]), strict_mask=True)
    result = to_result(instalign, 4, 4, Thresholds())
    assert not result.mask.any() and result.instances == []
    # DeRIS (sigmoid >= 0.5): the same logits are foreground.
    deris = Decision(False, 0.1, zero, zero[None], torch.tensor([0.9]), mask_is_union=True)
    assert to_result(deris, 4, 4, Thresholds()).mask.all()


def test_the_default_decision_is_instaligns_strict_mask():
    from refseg.modeling.base import RefSegModel
    from refseg.modeling.contracts import Inference

    inference = Inference(merged_logits=torch.zeros(1, 4, 4), no_target_prob=torch.tensor([0.1]),
                          instance_logits=torch.zeros(1, 2, 4, 4),
                          instance_scores=torch.tensor([[0.9, 0.2]]))
    (decision,) = RefSegModel().decide(inference, Thresholds())
    assert decision.strict_mask and not to_result(decision, 4, 4, Thresholds()).mask.any()


def test_a_union_mask_is_exactly_the_union_of_the_instance_masks_at_the_image_size():
    # Resizing the max of two logit maps covers more than the max of the resized maps
    # (interpolation of a maximum is at least the maximum of interpolations): DeRIS's mask
    # is the OR of its instance masks, as the released evaluation computes it.
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 6) * 3
    union = logits.max(dim=0).values
    plain = to_result(Decision(False, 0.1, union, logits, torch.ones(3)), 23, 17, Thresholds())
    exact = to_result(Decision(False, 0.1, union, logits, torch.ones(3), mask_is_union=True),
                      23, 17, Thresholds())
    instances = np.any([inst.mask for inst in exact.instances], axis=0)
    np.testing.assert_array_equal(exact.mask, instances)
    assert plain.mask.sum() > exact.mask.sum()  # the resized maximum spills over
