"""The whole perception branch from a Mask2Former model-zoo ``.pkl`` (COCO instance
segmentation: ``model_final_1e7f22.pkl`` Swin-S for DeRIS-B, ``model_final_f6e0f6.pkl``
Swin-B 384 for DeRIS-L), read by the restricted unpickler (numpy arrays only).

Every key of the file is accounted for:

- ``backbone.*``: the Swin backbone with its per-stage norms, by the shared Swin loader;
- ``sem_seg_head.pixel_decoder.*``: the pixel decoder, through `pixel_decoder_key_map`;
- ``sem_seg_head.predictor.*``: the masked decoder, through `masked_decoder_key_map` with
  the old name ``static_query`` of ``query_feat``. Mask2Former has 100 (200) queries and 9
  layers: the first N rows of ``static_query`` and ``query_embed`` are kept (listed under
  "adapted") and the layers beyond DeRIS's rounds, like the COCO ``class_embed``, are
  skipped on purpose. DeRIS's cognition layers, fusion and refer classifier are not in
  the file and start fresh on purpose;
- anything else: the criterion's buffer is skipped on purpose; any other key is unexpected.

The released code instead keeps ``query_embed`` only and draws the content queries from
an embedding of BEiT-3 width (docs/deris.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from refseg.errors import CheckpointError
from refseg.modeling.backbones.swin_weights import load_swin
from refseg.modeling.decoders import MaskedAttentionDecoder, masked_decoder_key_map
from refseg.modeling.pixel_decoders.msdeform import pixel_decoder_key_map
from refseg.modeling.weights import KeyReport, load_mapped, read_pkl_weights

BACKBONE = "backbone."
PIXEL_DECODER = "sem_seg_head.pixel_decoder."
PREDICTOR = "sem_seg_head.predictor."
_OTHER_SKIP = {r"criterion\..*": "Mask2Former's training criterion (a class-weight buffer)"}
_QUERY_TABLES = ("query_feat.weight", "query_embed.weight")
_DERIS_OWN = {
    r"(cognition_layers|query_fusion|refer_classifier)\..*":
        "DeRIS's cognition layers, query fusion and refer classifier (not in Mask2Former)",
}


@dataclass
class PerceptionReport:
    """Key reports of the three parts and of the keys outside them."""

    backbone: KeyReport
    pixel_decoder: KeyReport
    decoder: KeyReport
    rest: KeyReport

    @property
    def parts(self) -> tuple[KeyReport, ...]:
        return self.backbone, self.pixel_decoder, self.decoder, self.rest

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.parts)

    def __str__(self) -> str:
        names = ("backbone", "pixel decoder", "decoder", "other keys")
        return "\n".join(f"[{n}] {r}" for n, r in zip(names, self.parts))


def first_queries(key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Adapter: the first N rows of a (Q, C) query table for a model with N <= Q queries."""
    if key in _QUERY_TABLES and value.shape[1:] == shape[1:] and value.shape[0] >= shape[0]:
        return value[: shape[0]].clone()
    return None


def decoder_skips(num_layers: int) -> dict[str, str]:
    """Source keys of the predictor that DeRIS does not use, with the reason."""
    kept = "|".join(str(i) for i in range(num_layers))
    layers = r"transformer_(self_attention|cross_attention|ffn)_layers\.(?!(%s)\.)\d+\..*" % kept
    return {
        r"class_embed\..*": "COCO class head (DeRIS classifies referents itself)",
        layers: f"decoder layers beyond the {num_layers} loopback rounds",
    }


def _rest_report(state: dict[str, torch.Tensor], path: Path, strict: bool) -> KeyReport:
    """Account for the keys outside the three parts: known ones skipped, others unexpected."""
    report = KeyReport(source=str(path), prefix="(outside the perception branch)")
    for key in state:
        if key.startswith((BACKBONE, PIXEL_DECODER, PREDICTOR)):
            continue
        reason = next((r for p, r in _OTHER_SKIP.items() if re.fullmatch(p, key)), None)
        if reason is None:
            report.unexpected.append(key)
        else:
            report.skipped.setdefault(reason, []).append(key)
    if strict and not report.ok:
        raise CheckpointError(report.error_message())
    return report


def load_perception(path: str | Path, *, backbone: nn.Module, pixel_decoder: nn.Module,
                    decoder: MaskedAttentionDecoder, strict: bool = True) -> PerceptionReport:
    """Load a Mask2Former ``.pkl`` into the perception branch.

    Args:
        path: the model-zoo ``.pkl`` (``{"model": {name: numpy array}}``).
        backbone: a `SwinBackbone` of the file's variant.
        pixel_decoder: an `MSDeformAttnPixelDecoder` of the file's sizes.
        decoder: the masked decoder (N <= the file's queries, rounds <= its layers).
        strict: raise on any missing, unexpected or mis-shaped key.

    Returns:
        The `PerceptionReport` (every key of the file and of the modules accounted for).

    Raises:
        CheckpointError: unreadable file, or (strict) keys that do not match, with the
            report of the part at fault.
    """
    path = Path(path)
    backbone_report = load_swin(backbone, path, layout="mask2former", prefix=BACKBONE,
                                strict=strict)
    state = read_pkl_weights(path)
    pixel_map = pixel_decoder_key_map(pixel_decoder, prefix="")
    pixel_report = load_mapped(pixel_decoder, state, pixel_map.get, strict=strict, source=path,
                               prefix=PIXEL_DECODER)
    decoder_map = masked_decoder_key_map(decoder, prefix="", query_feat_name="static_query")
    decoder_report = load_mapped(
        decoder, state, decoder_map.get, strict=strict, source=path, prefix=PREDICTOR,
        skip=decoder_skips(decoder.num_layers), fresh=_DERIS_OWN,
        adapt=first_queries,
    )
    return PerceptionReport(backbone_report, pixel_report, decoder_report,
                            _rest_report(state, path, strict))
