"""Every accumulator: states add up to bit-identical results across process splits."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from refseg.metrics.gres import GRESAccumulator
from refseg.metrics.grec import GRECAccumulator
from refseg.metrics.refzom import RefZomAccumulator
from refseg.metrics.res import RECAccumulator, RESAccumulator
from refseg.metrics.rrefcoco import RRefCOCOAccumulator


def _feed(acc, sent_id: int, rng: np.random.Generator) -> None:
    union = int(rng.integers(0, 5000))
    inter = int(rng.integers(0, union + 1))
    pred_area = int(rng.integers(0, union + 1))
    nt, pred_nt = bool(rng.random() < 0.3), bool(rng.random() < 0.3)
    if isinstance(acc, GRESAccumulator):
        acc.add(sent_id, intersection=inter, union=union, pred_no_target=pred_nt, gt_no_target=nt)
    elif isinstance(acc, RESAccumulator):
        acc.add(sent_id, intersection=inter, union=union)
    elif isinstance(acc, RefZomAccumulator):
        acc.add(sent_id, intersection=inter, union=union, pred_area=pred_area, gt_no_target=nt)
    elif isinstance(acc, RRefCOCOAccumulator):
        acc.add(sent_id, ref_id=sent_id // 4, intersection=inter, union=union,
                pred_area=pred_area, gt_no_target=nt)
    elif isinstance(acc, GRECAccumulator):
        gt = rng.uniform(0, 50, (int(rng.integers(0, 3)), 4)).cumsum(axis=1)
        boxes = gt + rng.normal(0, 3, gt.shape)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        acc.update(sent_id, boxes, rng.random(len(boxes)), gt, gt_no_target=len(gt) == 0)
    else:
        gt = rng.uniform(0, 50, (1, 4)).cumsum(axis=1)
        acc.update(sent_id, gt + rng.normal(0, 5, (1, 4)), [1.0], gt)


ACCUMULATORS = [GRESAccumulator, GRECAccumulator, RESAccumulator, RECAccumulator,
                RefZomAccumulator, RRefCOCOAccumulator]


@pytest.mark.parametrize("cls", ACCUMULATORS, ids=lambda c: c.__name__)
def test_three_shuffled_shards_merge_to_the_same_result(cls):
    rng = np.random.default_rng(0)
    sent_ids = list(range(300))
    single = cls()
    for sent_id in sent_ids:
        _feed(single, sent_id, np.random.default_rng(sent_id))
    random.Random(1).shuffle(sent_ids)
    shards = [cls(), cls(), cls()]
    for k, sent_id in enumerate(sent_ids):
        _feed(shards[int(rng.integers(3))], sent_id, np.random.default_rng(sent_id))
    # as torch.distributed.all_gather_object would ship them: pickled plain states
    states = [pickle.loads(pickle.dumps(s.state_dict())) for s in shards]
    merged = cls.from_state(states[2])
    merged.merge(cls.from_state(states[0])).merge(cls.from_state(states[1]))
    assert merged.summary() == single.summary()  # exactly, not approximately
    assert merged.counts() == single.counts()
    assert (shards[1] + shards[0] + shards[2]).summary() == single.summary()
    assert len(shards[0]) + len(shards[1]) + len(shards[2]) == len(single)


def test_states_are_plain_data():
    acc = GRESAccumulator()
    acc.add(3, intersection=1, union=2, pred_no_target=False, gt_no_target=False)
    state = acc.state_dict()
    assert state == {"type": "GRESAccumulator", "params": {"pr_thresholds": (0.7, 0.8, 0.9)},
                     "records": {3: (1, 2, False, False)}}
    assert GRESAccumulator.from_state(state).summary() == acc.summary()


def test_repeated_identical_sentence_is_kept_once_and_a_conflicting_one_is_an_error():
    acc = RESAccumulator()
    acc.add(1, intersection=1, union=2)
    acc.add(1, intersection=1, union=2)  # DistributedSampler padding repeats samples
    assert len(acc) == 1
    with pytest.raises(ValueError, match="sent_id 1 recorded twice"):
        acc.add(1, intersection=2, union=2)
    other = RESAccumulator()
    other.add(1, intersection=0, union=2)
    with pytest.raises(ValueError, match="sent_id 1"):
        acc.merge(other)


def test_merge_refuses_other_types_and_thresholds():
    with pytest.raises(ValueError, match="cannot merge"):
        RESAccumulator().merge(RESAccumulator(pr_thresholds=(0.5,)))
    with pytest.raises(ValueError, match="cannot merge"):
        GRECAccumulator().merge(GRECAccumulator(score_thr=0.9))
    with pytest.raises(ValueError, match="cannot merge"):
        RESAccumulator().merge(GRESAccumulator())
    with pytest.raises(ValueError, match="given to RESAccumulator"):
        RESAccumulator.from_state(GRESAccumulator().state_dict())
