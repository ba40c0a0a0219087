"""The method-agnostic engine: data pipeline, training, checkpoints, evaluation.

Written once against `refseg.modeling.base.RefSegModel` and the method registry.
"""
