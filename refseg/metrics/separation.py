"""How well a score separates two kinds of sample, whatever the threshold.

Used for the no-target decision: positives are no-target sentences, negatives target ones,
the score is the model's no-target probability. N-acc and T-acc read one threshold;
the ROC AUC reads them all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative, ties counting half (the Mann-Whitney U statistic over P x N).

    Returns:
        In [0, 1] (0.5: no separation); None when either side is empty.
    """
    if len(positives) == 0 or len(negatives) == 0:
        return None
    pos = np.asarray(positives, dtype=np.float64)[:, None]
    neg = np.asarray(negatives, dtype=np.float64)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())
