"""BEiT-3 image-text encoder (multiway transformer), its official-checkpoint loader and
its sentencepiece tokenizer. Used as the cognition branch of DeRIS and the encoder of
InstanceVG."""

from refseg.modeling.beit3.model import (
    Beit3Config,
    Beit3Encoder,
    Beit3Output,
    beit3_base,
    beit3_large,
    beit3_tiny,
    resize_patch_positions,
    tokens_to_map,
)
from refseg.modeling.beit3.tokenizer import Beit3BatchTokenizer, Beit3Tokenizer
from refseg.modeling.beit3.weights import beit3_key_map, load_beit3

__all__ = [
    "Beit3Config",
    "Beit3Encoder",
    "Beit3Output",
    "Beit3BatchTokenizer",
    "Beit3Tokenizer",
    "beit3_base",
    "beit3_key_map",
    "beit3_large",
    "beit3_tiny",
    "load_beit3",
    "resize_patch_positions",
    "tokens_to_map",
]
