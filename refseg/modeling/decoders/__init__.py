"""Query decoders: Mask2Former's masked-attention decoder and its building blocks."""

from refseg.modeling.decoders.layers import (
    MLP,
    CrossAttentionLayer,
    FFNLayer,
    SelfAttentionLayer,
    open_empty_rows,
)
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
    "open_empty_rows",
]
