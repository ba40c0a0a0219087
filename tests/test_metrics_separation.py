"""ROC AUC of a score between two kinds of sample, computed by hand."""

import pytest

from refseg.metrics.separation import roc_auc


def test_roc_auc_hand_computed():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0  # every positive above every negative
    assert roc_auc([0.1], [0.9, 0.8]) == 0.0
    assert roc_auc([0.5], [0.5]) == 0.5  # a tie counts half
    # pairs (p, n): (0.7, 0.2) win, (0.7, 0.7) tie, (0.3, 0.2) win, (0.3, 0.7) loss
    assert roc_auc([0.7, 0.3], [0.2, 0.7]) == pytest.approx((1 + 0.5 + 1 + 0) / 4)


def test_roc_auc_without_one_side_is_none():
    assert roc_auc([], [0.3]) is None
    assert roc_auc([0.3], []) is None
