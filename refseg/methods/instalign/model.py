"""InstAlign assembled (Fig. 2): text encoder -> (language-aware) Swin -> MSDeformAttn pixel
decoder -> masked-attention decoder with object-text cross-attention -> relevance and mask
heads on every stage -> Instance Aggregation and the no-target predictor.

Builders are plain functions over an `InstAlignConfig`; the model receives built parts.

Legend: B batch, Q queries, L words, C hidden channels, Ct text channels, S input side,
H/W mask side (S / 4).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from refseg.errors import ConfigError
from refseg.methods.instalign.aggregation import FixedSelection, build_aggregation
from refseg.methods.instalign.config import InstAlignConfig
from refseg.methods.instalign.criterion import (
    Stage,
    build_instance_supervision,
    merged_mask_losses,
    no_target_loss,
)
from refseg.methods.instalign.fusion import LanguageAwareBackbone, TextAgnosticBackbone
from refseg.methods.instalign.heads import RelevanceHead, build_no_target_predictor
from refseg.methods.instalign.object_text import InstAlignDecoder, TextContext
from refseg.modeling.base import Decision, RefSegModel, Thresholds
from refseg.modeling.contracts import Batch, Inference


@dataclass
class InstAlignOutputs:
    """Raw outputs of a forward pass.

    Attributes:
        stages: decoder stages (stage 0 = initial queries), for deep supervision.
        pad_mask: (B, L) word padding.
        merged_logits: (B, H, W) aggregated mask logits M (Eq. 5).
        no_target_logits: (B,) z (Eq. 7).
    """

    stages: list[Stage]
    pad_mask: torch.Tensor
    merged_logits: torch.Tensor
    no_target_logits: torch.Tensor


class InstAlign(RefSegModel):
    """Phrase-instance alignment for generalized referring segmentation."""

    def __init__(self, *, config: InstAlignConfig, text_encoder: nn.Module, backbone: nn.Module,
                 pixel_decoder: nn.Module, text_proj: nn.Module, decoder: InstAlignDecoder,
                 relevance_head: RelevanceHead, aggregation: nn.Module,
                 no_target: nn.Module):
        super().__init__()
        self.config = config
        self.text_encoder = text_encoder
        self.backbone = backbone  # LanguageAwareBackbone or TextAgnosticBackbone
        self.pixel_decoder = pixel_decoder
        self.text_proj = text_proj
        self.decoder = decoder
        self.relevance_head = relevance_head
        self.aggregation = aggregation
        self.no_target = no_target
        self.instance_supervision = build_instance_supervision(config)

    def forward(self, batch: Batch) -> InstAlignOutputs:
        """Images (B, 3, S, S) and words (B, L) -> every stage's relevance (B, Q) and masks
        (B, Q, H, W) (and, after each block, the words (B, L, C)), the aggregated mask
        (B, H, W) and the no-target logits (B,)."""
        text = self.text_encoder(batch.input_ids, batch.text_pad_mask)
        pad_mask = text.pad_mask
        features = self.backbone(batch.images, text.tokens, pad_mask)
        mask_features, multi_scale = self.pixel_decoder(features)
        words = self.text_proj(text.tokens).masked_fill(pad_mask[..., None], 0.0)
        context = TextContext(words=words, pad_mask=pad_mask)
        decoded = self.decoder(multi_scale, mask_features, context)
        stages = [
            Stage(relevance_logits=self.relevance_head(q), mask_logits=m, queries=q,
                  words=None if i == 0 else context.per_block[i - 1])
            for i, (q, m) in enumerate(zip(decoded.queries, decoded.mask_logits))
        ]
        last = stages[-1]
        return InstAlignOutputs(
            stages=stages,
            pad_mask=pad_mask,
            merged_logits=self.aggregation(last.mask_logits, last.relevance_logits),
            no_target_logits=self.no_target(last.queries, last.relevance_logits, text.sentence),
        )

    def loss(self, outputs: InstAlignOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        """L = ins_weight L_ins + merged_weight L_mask (+ merged dice) + no_target_weight L_nt
        (InstAlign Eq. 8); every term is returned for logging."""
        cfg = self.config
        targets = batch.targets
        if len(targets) != outputs.merged_logits.shape[0]:
            raise ValueError(f"InstAlign.loss: {len(targets)} targets for "
                             f"{outputs.merged_logits.shape[0]} samples")
        losses = self.instance_supervision(outputs.stages, outputs.pad_mask, targets)
        losses.update(merged_mask_losses(outputs.merged_logits, targets))
        losses["no_target"] = no_target_loss(outputs.no_target_logits, targets,
                                             cfg.no_target_pos_weight)
        total = (cfg.merged_weight * losses["merged_bce"]
                 + cfg.merged_dice_weight * losses["merged_dice"]
                 + cfg.no_target_weight * losses["no_target"])
        if "ins" in losses:
            total = total + cfg.ins_weight * losses["ins"]
        losses["loss"] = total
        return losses

    def infer(self, outputs: InstAlignOutputs) -> Inference:
        """The aggregated mask, sigmoid(z) as the no-target probability, and the last
        stage's masks (B, Q, H, W) with their relevance p_i (B, Q) as instance scores."""
        last = outputs.stages[-1]
        return Inference(
            merged_logits=outputs.merged_logits,
            no_target_prob=outputs.no_target_logits.sigmoid(),
            instance_logits=last.mask_logits,
            instance_scores=last.relevance_logits.sigmoid(),
        )

    def decide(self, inference: Inference, thresholds: Thresholds) -> list[Decision]:
        """The default rule; with ``aggregation="fixed"`` (Table 3(b), row 1) the mask is
        the union of the instances kept at *this call's* instance threshold (the module
        selected at the threshold it was built with, for the merged-mask loss)."""
        decisions = super().decide(inference, thresholds)
        if isinstance(self.aggregation, FixedSelection):
            decisions = [dataclasses.replace(d, mask_is_union=True) for d in decisions]
        return decisions

    def param_groups(self, lr: float) -> list[dict]:
        """AdamW groups: the visual backbone's own weights at ``backbone_lr_factor`` x lr
        (Mask2Former / ReLA: 0.1), the text encoder at ``text_encoder_lr_factor`` x lr (ReLA:
        1), everything else (fusion, decoders, heads) at lr; norms, biases, embeddings,
        the PReLU slope and Swin's position-bias tables without weight decay (Mask2Former)."""
        cfg = self.config
        factors = {"backbone.backbone.": cfg.backbone_lr_factor,
                   "text_encoder.": cfg.text_encoder_lr_factor}
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        no_decay = _no_decay_names(self)
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            part = next((p for p in factors if name.startswith(p)), "")
            groups.setdefault((part, name in no_decay), []).append(param)
        out = []
        for (part, skip_decay), params in groups.items():
            group = {"params": params, "lr": lr * factors.get(part, 1.0),
                     "name": (part.rstrip(".") or "heads") + ("/no_decay" if skip_decay else "")}
            if skip_decay:
                group["weight_decay"] = 0.0
            out.append(group)
        return out


_NO_DECAY = re.compile(r"relative_position_bias_table$")


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters Mask2Former trains without weight decay: norms and embeddings (plus every
    1-d tensor: biases, the PReLU slope) and Swin's relative position-bias tables."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if (param.dim() <= 1 or isinstance(module, nn.Embedding)
                    or _NO_DECAY.search(full)):
                names.add(full)
    return names


# ---------------------------------------------------------------------------- builders
def build_text_encoder(cfg: InstAlignConfig, tokenizer, *, pretrained: bool = True) -> nn.Module:
    """BERT-base from ``cfg.text_encoder_path`` or a random BERT of the configured sizes.

    With ``pretrained=False`` (weights about to come from a refseg checkpoint) a "bert"
    encoder is built at the configured sizes without reading the directory.
    """
    from refseg.modeling.text import bert_from_dir, bert_tiny

    if cfg.text_encoder == "bert" and pretrained:
        if not cfg.text_encoder_path:
            raise ConfigError("model.text_encoder_path is not set (a local bert-base-uncased "
                              "directory; or model.text_encoder=bert-random for offline runs)")
        encoder, _ = bert_from_dir(cfg.text_encoder_path)
    else:
        encoder = bert_tiny(vocab_size=tokenizer.vocab_size,
                            max_positions=max(cfg.text_max_positions, tokenizer.max_length),
                            hidden=cfg.text_dim, layers=cfg.text_layers, heads=cfg.text_heads)
    encoder.check_tokenizer(tokenizer)
    return encoder


def build_backbone(cfg: InstAlignConfig, *, pretrained: bool = True) -> nn.Module:
    """The Swin named by ``cfg.backbone`` with its local weights (if any, and if pretrained)."""
    from refseg.modeling.backbones.swin import SWIN_VARIANTS
    from refseg.modeling.backbones.swin_weights import load_swin

    if cfg.backbone not in SWIN_VARIANTS:
        raise ConfigError(f"model.backbone={cfg.backbone!r}: expected one of "
                          f"{', '.join(SWIN_VARIANTS)}")
    overrides = {"drop_path_rate": cfg.drop_path_rate}
    if cfg.backbone == "swin_base":
        overrides["pretrain_image_size"] = cfg.backbone_pretrain_size
    swin = SWIN_VARIANTS[cfg.backbone](**overrides)
    if pretrained and cfg.backbone_weights:
        load_swin(swin, cfg.backbone_weights, layout=cfg.backbone_weights_layout)
    elif pretrained and cfg.backbone != "swin_nano":
        warnings.warn(f"model.backbone_weights is empty: {cfg.backbone} starts from random "
                      "weights (the paper starts from ImageNet-22k)", stacklevel=2)
    return swin


def build_instalign(cfg: InstAlignConfig, tokenizer, *, pretrained: bool = True) -> InstAlign:
    """Build the whole model.

    Args:
        cfg: the model config.
        tokenizer: the text tokenizer (its vocabulary size sizes a random BERT).
        pretrained: read the pretrained Swin/BERT files named in ``cfg``; False when the
            weights come from a refseg checkpoint right after.
    """
    from refseg.modeling.pixel_decoders.msdeform import MSDeformAttnPixelDecoder

    cfg.validate()
    text_encoder = build_text_encoder(cfg, tokenizer, pretrained=pretrained)
    swin = build_backbone(cfg, pretrained=pretrained)
    if cfg.early_fusion == "pwam":
        backbone = LanguageAwareBackbone(backbone=swin, text_dim=text_encoder.width,
                                         num_heads=cfg.fusion_heads,
                                         gate=cfg.fusion_gate == "open")
    else:
        backbone = TextAgnosticBackbone(backbone=swin)
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels=swin.spec.channels, strides=swin.spec.strides, conv_dim=cfg.hidden_dim,
        mask_dim=cfg.mask_dim, num_encoder_layers=cfg.encoder_layers, n_heads=cfg.encoder_heads,
        n_points=cfg.encoder_points, ffn_dim=cfg.encoder_ffn_dim,
    )
    poa = cfg.instance_supervision == "poa" and cfg.poa_weight != 0
    decoder = InstAlignDecoder(
        in_channels=cfg.hidden_dim, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
        num_layers=cfg.decoder_layers, n_heads=cfg.decoder_heads, ffn_dim=cfg.decoder_ffn_dim,
        mask_dim=cfg.mask_dim, last_words=poa,
    )
    no_target = build_no_target_predictor(cfg.no_target_input, dim=cfg.hidden_dim,
                                          text_dim=text_encoder.width)
    if not no_target.pooling.reads_sentence:
        # t_s goes unread: its pooler stays as loaded (and out of a distributed reduction).
        text_encoder.bert.pooler.requires_grad_(False)
    return InstAlign(
        config=cfg,
        text_encoder=text_encoder,
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        text_proj=nn.Linear(text_encoder.width, cfg.hidden_dim),
        decoder=decoder,
        relevance_head=RelevanceHead(dim=cfg.hidden_dim, num_layers=cfg.relevance_mlp_layers),
        aggregation=build_aggregation(cfg.aggregation,
                                      selection_threshold=cfg.thresholds.instance),
        no_target=no_target,
    )


def build_tokenizer(cfg: InstAlignConfig, data_cfg, train_sentences: list[str]):
    """BERT's WordPiece tokenizer from the local directory, or a word vocabulary built from
    the training sentences (offline variants); length ``data_cfg.max_text_length``."""
    from refseg.modeling.text import TextTokenizer, WordTokenizer

    cfg.validate()
    if cfg.tokenizer == "bert":
        if not cfg.text_encoder_path:
            raise ConfigError("model.text_encoder_path is not set (its vocabulary is BERT's)")
        return TextTokenizer.from_bert_dir(cfg.text_encoder_path,
                                           max_length=data_cfg.max_text_length)
    return WordTokenizer.build(train_sentences, max_length=data_cfg.max_text_length)


def load_tokenizer(cfg: InstAlignConfig, directory: str):
    """The tokenizer a checkpoint saved with ``tokenizer.save``."""
    from refseg.modeling.text import load_tokenizer as _load

    return _load(directory)
