"""Pixel decoders: backbone maps -> per-pixel mask features and multi-scale decoder inputs."""

from refseg.modeling.pixel_decoders.msdeform import (
    MSDeformAttnPixelDecoder,
    PixelDecoderOutput,
    pixel_decoder_key_map,
)

__all__ = ["MSDeformAttnPixelDecoder", "PixelDecoderOutput", "pixel_decoder_key_map"]
