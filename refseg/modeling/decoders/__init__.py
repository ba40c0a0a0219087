"""Query decoders: Mask2Former's masked-attention decoder and its building blocks."""

from refseg.modeling.decoders.layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from refseg.modeling.decoders.masked import (
    DecoderOutput,
    MaskedAttentionDecoder,
    masked_decoder_key_map,
)

__all__ = [
    "MLP",
    "CrossAttentionLayer",
    "DecoderOutput",
    "FFNLayer",
    "MaskedAttentionDecoder",
    "SelfAttentionLayer",
    "masked_decoder_key_map",
]
