"""DeRIS assembled (Fig. 4): a perception branch (Swin -> MSDeformAttn pixel decoder ->
masked-decoder layers) and a cognition branch (BEiT-3 on the low-resolution image and the
sentence), joined by the loopback synergy; an existence head on the final queries.

Builders are plain functions over a `DerisConfig`; the model receives built parts.

Legend: B batch, Q queries, L words, C hidden channels, D BEiT-3 channels, S perception
input side, S_c cognition input side, H/W mask side (S / 4), h/w BEiT-3 patch grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refseg.errors import ConfigError
from refseg.methods.deris.cognition import refer_probability
from refseg.methods.deris.config import DerisConfig
from refseg.methods.deris.criterion import DerisCriterion, Round
from refseg.methods.deris.heads import ExistenceInputs, build_existence_head
from refseg.methods.deris.loopback import LoopbackContext, LoopbackDecoder
from refseg.modeling.base import Decision, RefSegModel, Thresholds
from refseg.modeling.beit3 import tokens_to_map
from refseg.modeling.contracts import Batch, Inference


@dataclass
class DerisOutputs:
    """Raw outputs of a forward pass.

    Attributes:
        rounds: R + 1 loopback rounds (stage 0 = the initial queries), for the loss.
        existence_logits: (B,) logit that the sentence refers to something.
    """

    rounds: list[Round]
    existence_logits: torch.Tensor


class CognitionFeatures(nn.Module):
    """BEiT-3 on [image ; sentence], its tokens projected to C (released ``vis_embed`` and
    ``text_embed``).

    Args:
        encoder: a `Beit3Encoder`.
        dim: C.
        image_size: S_c, the side the image is resized to first.
    """

    def __init__(self, *, encoder: nn.Module, dim: int, image_size: int):
        super().__init__()
        self.encoder = encoder
        self.image_size = image_size
        self.image_proj = nn.Linear(encoder.dim, dim)
        self.text_proj = nn.Linear(encoder.dim, dim)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode.

        Args:
            images: (B, 3, S, S) normalised perception-size images.
            input_ids: (B, L) token ids.
            pad_mask: (B, L) bool, True at padding.

        Returns:
            image_map (B, C, h, w), text (B, L, C) zero at padding, cls (B, D).
        """
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size),
                                   mode="bilinear", align_corners=False, antialias=True)
        out = self.encoder(images, input_ids, pad_mask)
        patches = self.image_proj(out.image_tokens[:, 1:])  # (B, h*w, C), CLS dropped
        image_map = tokens_to_map(patches, out.grid)  # (B, C, h, w)
        text = self.text_proj(out.text_tokens).masked_fill(pad_mask[..., None], 0.0)
        return image_map, text, out.cls


class MaskFeatureFusion(nn.Module):
    """F = Conv1x1([F_p ; Up(F_c)]) (DeRIS Eq. 3): perception mask features and the
    bilinearly upsampled BEiT-3 patch features."""

    def __init__(self, *, mask_dim: int, cognition_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(mask_dim + cognition_dim, mask_dim, kernel_size=1)

    def forward(self, mask_features: torch.Tensor, image_map: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, C, h, w) -> (B, C, H, W)."""
        up = F.interpolate(image_map, size=mask_features.shape[-2:], mode="bilinear",
                           align_corners=False)
        return self.proj(torch.cat([mask_features, up], dim=1))


class Deris(RefSegModel):
    """Decoupled perception and cognition with loopback synergy."""

    threshold_keys = ("instance", "mask")  # no-target iff no instance passes

    def __init__(self, *, config: DerisConfig, backbone: nn.Module, pixel_decoder: nn.Module,
                 cognition: CognitionFeatures, fusion: MaskFeatureFusion,
                 decoder: LoopbackDecoder, existence: nn.Module):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.cognition = cognition
        self.fusion = fusion
        self.decoder = decoder
        self.existence = existence
        self.criterion = DerisCriterion.from_config(config)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "Deris":
        """A frozen backbone stays in eval mode (a fixed feature extractor)."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def perceive(self, images: torch.Tensor):
        """Swin + pixel decoder: (B, 3, S, S) -> mask features (B, C, H, W) and 3 scales."""
        if self.config.freeze_backbone:
            with torch.no_grad():
                features = self.backbone(images)
        else:
            features = self.backbone(images)
        return self.pixel_decoder(features)

    def forward(self, batch: Batch) -> DerisOutputs:
        """Images (B, 3, S, S) and words (B, L) -> every round's refer logits (B, Q, 2) and
        masks (B, Q, H, W), and the existence logits (B,)."""
        image_map, text, cls = self.cognition(batch.images, batch.input_ids, batch.text_pad_mask)
        mask_features, multi_scale = self.perceive(batch.images)
        fused = self.fusion(mask_features, image_map)
        context = LoopbackContext(text=text, pad_mask=batch.text_pad_mask, mask_features=fused)
        decoded = self.decoder(multi_scale, fused, context)
        rounds = [Round(refer_logits=r, mask_logits=m)
                  for r, m in zip(context.refer_logits, decoded.mask_logits)]
        existence = self.existence(ExistenceInputs(
            queries=decoded.hidden, text=text, pad_mask=batch.text_pad_mask,
            image_map=image_map, cls=cls,
        ))
        return DerisOutputs(rounds=rounds, existence_logits=existence)

    def loss(self, outputs: DerisOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        """DeRIS Eq. 8; every term is returned for logging."""
        return self.criterion(outputs.rounds, outputs.existence_logits, batch.targets)

    def infer(self, outputs: DerisOutputs) -> Inference:
        """Scores = refer probabilities of the last round (times the existence probability
        with ``existence_at_test``, the paper's Table 6); the merged logits are the union
        (max) of the instances above the config's instance threshold."""
        last = outputs.rounds[-1]
        scores = refer_probability(last.refer_logits)  # (B, Q)
        if self.config.existence_at_test:
            scores = scores * outputs.existence_logits.float().sigmoid()[:, None]
        keep = scores > self.config.thresholds.instance
        return Inference(
            merged_logits=union_logits(last.mask_logits, keep),
            no_target_prob=1.0 - scores.max(dim=1).values,
            instance_logits=last.mask_logits,
            instance_scores=scores,
        )

    def decide(self, inference: Inference, thresholds: Thresholds) -> list[Decision]:
        """DeRIS's rule: keep the instances whose refer probability exceeds the instance
        threshold; the mask is the union of their masks; no target iff none is kept.
        ``no_target_score`` = 1 - the highest score; ``thresholds.no_target`` is not used
        (the existence head takes part only through the scores, ``existence_at_test``)."""
        decisions = []
        for b in range(inference.instance_scores.shape[0]):
            scores = inference.instance_scores[b]
            keep = scores > thresholds.instance
            logits = inference.instance_logits[b]
            decisions.append(Decision(
                no_target=not bool(keep.any()),
                no_target_score=float(1.0 - scores.max()),
                mask_logits=union_logits(logits[None], keep[None])[0],
                instance_logits=logits[keep],
                instance_scores=scores[keep],
                mask_is_union=True,  # as the released evaluation: the OR of the kept masks
            ))
        return decisions

    def param_groups(self, lr: float) -> list[dict]:
        """Adam groups of the released configs: Swin at ``backbone_lr_factor`` x lr (when
        trained), BEiT-3 at ``cognition_lr_factor`` x lr, everything else at lr; every
        group carries the config's betas, eps and AMSGrad."""
        cfg = self.config
        factors = {"backbone.": cfg.backbone_lr_factor,
                   "cognition.encoder.": cfg.cognition_lr_factor}
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                part = next((p for p in factors if name.startswith(p)), "")
                groups.setdefault(part, []).append(param)
        options = {"betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps, "amsgrad": cfg.amsgrad}
        return [{"params": params, "lr": lr * factors.get(part, 1.0),
                 "name": part.rstrip(".") or "heads", **options}
                for part, params in groups.items()]


def union_logits(mask_logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits of the union of the kept instances: the max over them (a pixel is in the union
    at any mask threshold iff its best kept instance is), -inf-like where none is kept.

    Args:
        mask_logits: (B, Q, H, W).
        keep: (B, Q) bool.

    Returns:
        (B, H, W).
    """
    floor = torch.finfo(mask_logits.dtype).min
    masked = mask_logits.masked_fill(~keep[..., None, None], floor)
    return masked.amax(dim=1)


# ---------------------------------------------------------------------------- builders
def build_backbone(cfg: DerisConfig) -> nn.Module:
    """The Swin named by ``cfg.backbone`` (weights come with the perception branch)."""
    from refseg.modeling.backbones.swin import SWIN_VARIANTS

    overrides = {"drop_path_rate": cfg.backbone_drop_path}
    if cfg.backbone == "swin_base":
        overrides["pretrain_image_size"] = cfg.backbone_pretrain_size
    return SWIN_VARIANTS[cfg.backbone](**overrides)


def build_cognition(cfg: DerisConfig, tokenizer, *, pretrained: bool = True) -> CognitionFeatures:
    """BEiT-3 of the configured sizes (+ its checkpoint) and the projections to C."""
    from refseg.modeling.beit3 import Beit3Config, Beit3Encoder, load_beit3

    vocab = cfg.cognition_vocab_size if cfg.tokenizer == "beit3" else tokenizer.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ConfigError(f"model.cognition_vocab_size={vocab}: the tokenizer emits "
                          f"{tokenizer.vocab_size} ids")
    if tokenizer.max_length > cfg.cognition_text_positions - 2:
        raise ConfigError(f"model.cognition_text_positions={cfg.cognition_text_positions}: "
                          f"too few for {tokenizer.max_length} tokens (2 rows are reserved)")
    encoder = Beit3Encoder.from_config(Beit3Config(
        img_size=cfg.cognition_size, patch_size=cfg.cognition_patch_size, dim=cfg.cognition_dim,
        depth=cfg.cognition_depth, heads=cfg.cognition_heads, ffn_dim=cfg.cognition_ffn_dim,
        vocab_size=vocab, max_text_positions=cfg.cognition_text_positions,
        drop_path_rate=cfg.cognition_drop_path,
    ))
    if pretrained and cfg.cognition_weights:
        load_beit3(encoder, cfg.cognition_weights)
    return CognitionFeatures(encoder=encoder, dim=cfg.hidden_dim, image_size=cfg.cognition_size)


def build_deris(cfg: DerisConfig, tokenizer, *, pretrained: bool = True) -> Deris:
    """Build the whole model.

    Args:
        cfg: the model config.
        tokenizer: the text tokenizer (its vocabulary sizes the tiny BEiT-3's embedding).
        pretrained: read the Mask2Former ``.pkl`` and BEiT-3 files named in ``cfg``; False
            when the weights come from a refseg checkpoint right after.
    """
    from refseg.methods.deris.weights import load_perception
    from refseg.modeling.pixel_decoders.msdeform import MSDeformAttnPixelDecoder

    cfg.validate()
    backbone = build_backbone(cfg)
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels=backbone.spec.channels, strides=backbone.spec.strides,
        conv_dim=cfg.hidden_dim, mask_dim=cfg.mask_dim, num_encoder_layers=cfg.encoder_layers,
        n_heads=cfg.encoder_heads, n_points=cfg.encoder_points, ffn_dim=cfg.encoder_ffn_dim,
        norm_groups=cfg.norm_groups,
    )
    decoder = LoopbackDecoder(
        synergy=cfg.synergy, share_cognition=cfg.share_cognition,
        fuse_last=cfg.existence_source == "query",
        cognition_heads=cfg.cognition_layer_heads, cognition_ffn_dim=cfg.cognition_layer_ffn_dim,
        pool_stride=cfg.mask_pool_stride, pool_norm=cfg.mask_pool_norm,
        position_role=cfg.position_role, in_channels=cfg.hidden_dim, hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries, num_layers=cfg.rounds, n_heads=cfg.decoder_heads,
        ffn_dim=cfg.decoder_ffn_dim, mask_dim=cfg.mask_dim,
    )
    if pretrained and cfg.perception_weights:
        load_perception(cfg.perception_weights, backbone=backbone, pixel_decoder=pixel_decoder,
                        decoder=decoder)
    elif pretrained and cfg.backbone != "swin_nano":
        warnings.warn("model.perception_weights is empty: the perception branch starts from "
                      "random weights (the paper starts from a Mask2Former COCO model)",
                      stacklevel=2)
    cognition = build_cognition(cfg, tokenizer, pretrained=pretrained)
    return Deris(
        config=cfg,
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        cognition=cognition,
        fusion=MaskFeatureFusion(mask_dim=cfg.mask_dim, cognition_dim=cfg.hidden_dim),
        decoder=decoder,
        existence=build_existence_head(cfg.existence_source, dim=cfg.hidden_dim,
                                       cls_dim=cfg.cognition_dim,
                                       num_layers=cfg.existence_layers,
                                       n_heads=cfg.decoder_heads,
                                       ffn_dim=cfg.existence_ffn_dim, dropout=cfg.dropout),
    )


def build_tokenizer(cfg: DerisConfig, data_cfg, train_sentences: list[str]):
    """BEiT-3's sentencepiece tokenizer from ``cfg.tokenizer_path``, or a word vocabulary
    built from the training sentences (offline variants); length ``data_cfg.max_text_length``."""
    from refseg.modeling.beit3 import Beit3BatchTokenizer
    from refseg.modeling.text import WordTokenizer

    cfg.validate()
    if cfg.tokenizer == "beit3":
        if not cfg.tokenizer_path:
            raise ConfigError("model.tokenizer_path is not set (a local beit3.spm; or "
                              "model.tokenizer=word for offline runs)")
        return Beit3BatchTokenizer.from_spm(cfg.tokenizer_path,
                                            max_length=data_cfg.max_text_length)
    return WordTokenizer.build(train_sentences, max_length=data_cfg.max_text_length)


def load_tokenizer(cfg: DerisConfig, directory: str):
    """The tokenizer a checkpoint saved with ``tokenizer.save``."""
    from refseg.modeling.beit3 import Beit3BatchTokenizer
    from refseg.modeling.text import load_tokenizer as _load

    if cfg.tokenizer == "beit3":
        return Beit3BatchTokenizer.load(directory)
    return _load(directory)
