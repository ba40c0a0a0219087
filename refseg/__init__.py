"""refseg: referring expression segmentation and comprehension.

Heavy modules (torch, transformers) are imported only by the paths that need them, so
`refseg score` and `refseg data` start fast.
"""

__version__ = "0.1.0"


def load(checkpoint, device=None):
    """Load a trained model as a ready-to-use predictor (see `refseg.predictor.load`):
    ``refseg.load(path)`` or ``refseg.load(path, "cpu")``."""
    from refseg.predictor import load as _load

    return _load(checkpoint, device)
