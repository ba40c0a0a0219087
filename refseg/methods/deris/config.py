"""DeRIS's configuration: defaults are DeRIS-B on gRefCOCO (Swin-S + BEiT-3 base).

Named run configs are small functions returning a full `RunConfig`:

- ``deris-b`` / ``deris-l``: gRefCOCO (GRES), 20 queries, text length 50, 6 epochs,
  instance threshold 0.7 (B) / 0.9 (L);
- ``deris-b-refcoco`` / ``deris-l-refcoco``: RefCOCO/+/g (RES), 10 queries, text length
  20, 20 epochs, threshold 0.9 (the released RES configs);
- ``deris-tiny``: the same code with small numbers, trained offline on CPU on the synthetic
  benchmark.

Every size is a field, so any of them can be changed with ``model.<field>=<value>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refseg.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    check_at_least,
    check_choices,
    check_divides,
)
from refseg.errors import ConfigError
from refseg.modeling.base import Thresholds

SYNERGIES = ("loopback", "p2c", "c2p")  # the paper's Table 7 query-transfer forms
POOL_NORMS = ("image", "mask")
POSITION_ROLES = ("key", "content")
EXISTENCE_SOURCES = ("query", "image", "cls")  # Supp. Table 9
TOKENIZERS = ("beit3", "word")
BACKBONES = ("swin_nano", "swin_tiny", "swin_small", "swin_base")


@dataclass
class DerisConfig:
    """DeRIS model, loss and decision settings.

    Ablation switches: ``synergy`` (Table 7: loopback, perception-to-cognition only,
    cognition-to-perception), ``rounds`` (Supp. Table 11), ``share_cognition`` (Supp.
    Table 10), ``existence_source`` (Supp. Table 9), ``existence_weight`` and
    ``existence_at_test`` (Table 6), ``num_queries`` (Supp. Fig. 8).
    """

    # Perception branch: Swin -> MSDeformAttn pixel decoder -> masked decoder, all from a
    # Mask2Former COCO instance-segmentation .pkl (model zoo), the backbone frozen.
    backbone: str = "swin_small"  # a name in refseg.modeling.backbones.swin.SWIN_VARIANTS
    backbone_pretrain_size: int = 384  # swin_base only: 384 (window 12) or 224 (window 7)
    backbone_drop_path: float = 0.0  # a frozen backbone is a fixed feature extractor
    freeze_backbone: bool = True
    perception_weights: str = ""  # Mask2Former .pkl (backbone, pixel decoder, decoder)
    hidden_dim: int = 256
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_points: int = 4
    encoder_ffn_dim: int = 1024
    mask_dim: int = 256
    norm_groups: int = 32
    num_queries: int = 20  # N: 20 for GRES, 10 for RES
    rounds: int = 3  # loopback rounds = masked-decoder layers (of Mask2Former's 9)
    decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    # Cognition branch: BEiT-3 on the image at a low resolution and the sentence.
    cognition_size: int = 224  # BEiT-3 input side (the perception side is data.image_size)
    cognition_weights: str = ""  # BEiT-3 .pth (microsoft/unilm beit3 release)
    cognition_patch_size: int = 16
    cognition_dim: int = 768
    cognition_depth: int = 12
    cognition_heads: int = 12
    cognition_ffn_dim: int = 3072
    cognition_vocab_size: int = 64010  # rows of BEiT-3's text embedding (word: vocabulary)
    cognition_text_positions: int = 1024
    cognition_drop_path: float = 0.1
    tokenizer: str = "beit3"  # beit3 (sentencepiece beit3.spm) | word (training sentences)
    tokenizer_path: str = ""  # local beit3.spm
    # Loopback synergy (Sec. 3.2): cognition layer after every perception prediction.
    synergy: str = "loopback"  # loopback | p2c (perception-to-cognition) | c2p
    share_cognition: bool = False  # one cognition layer for every round (Supp. Table 10)
    cognition_layer_heads: int = 8
    cognition_layer_ffn_dim: int = 2048
    mask_pool_stride: int = 4  # features and masks pooled at this extra stride (Eq. 4)
    mask_pool_norm: str = "image"  # image (released: mean over all pixels) | mask (its area)
    position_role: str = "key"  # key (released: P in queries/keys of Eq. 5) | content
    # Existence head (Eq. 1): text-aware layers over the final queries, then pooled.
    existence_source: str = "query"  # query | image (BEiT-3 patches) | cls (BEiT-3 CLS)
    existence_layers: int = 3
    existence_ffn_dim: int = 512
    dropout: float = 0.1  # existence-head layers (the released code's aligner)
    existence_at_test: bool = False  # score = refer x existence (Table 6; released: off)
    # Loss (Sec. 3.4): Mask2Former matching and terms, auxiliary rounds x aux_weight.
    class_weight: float = 2.0  # refer classification, cost and loss
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1  # CE weight of the "not referred" class
    existence_weight: float = 1.0
    aux_weight: float = 0.2
    deep_supervision: bool = True
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    # Optimiser groups (released configs): BEiT-3 at lr / 2, Swin at lr / 10 (frozen by
    # default); Adam betas (0.9, 0.98), eps 1e-9, AMSGrad, applied to every group.
    backbone_lr_factor: float = 0.1
    cognition_lr_factor: float = 0.5
    adam_betas: tuple[float, ...] = (0.9, 0.98)
    adam_eps: float = 1e-9
    amsgrad: bool = True
    # Decision: instances with refer probability > instance threshold, their union the
    # mask; no target iff none passes (0.7 for DeRIS-B, 0.9 for DeRIS-L).
    thresholds: Thresholds = field(default_factory=lambda: Thresholds(instance=0.7))

    def validate(self) -> None:
        """Raise ConfigError on a value outside a field's choices or range."""
        check_choices(self, "model", {
            "synergy": SYNERGIES,
            "existence_source": EXISTENCE_SOURCES,
            "tokenizer": TOKENIZERS,
            "backbone": BACKBONES,
            "mask_pool_norm": POOL_NORMS,
            "position_role": POSITION_ROLES,
        })
        check_at_least(self, "model", ("num_queries", "rounds", "hidden_dim", "mask_dim",
                                       "num_points", "cognition_size", "cognition_dim",
                                       "cognition_depth", "mask_pool_stride",
                                       "existence_layers", "encoder_heads", "encoder_points",
                                       "encoder_ffn_dim", "norm_groups", "decoder_heads",
                                       "decoder_ffn_dim", "cognition_patch_size",
                                       "cognition_heads", "cognition_ffn_dim",
                                       "cognition_layer_heads", "cognition_layer_ffn_dim"), 1)
        check_at_least(self, "model", ("encoder_layers",), 0)
        check_divides(self, "model", (("hidden_dim", "encoder_heads"),
                                      ("hidden_dim", "decoder_heads"),
                                      ("hidden_dim", "norm_groups"),
                                      ("hidden_dim", "cognition_layer_heads"),
                                      ("cognition_dim", "cognition_heads")))
        if self.cognition_size % self.cognition_patch_size:
            raise ConfigError(f"model.cognition_size={self.cognition_size}: not a multiple of "
                              f"model.cognition_patch_size={self.cognition_patch_size}")
        if self.mask_dim != self.hidden_dim:
            raise ConfigError(f"model.mask_dim={self.mask_dim}: must equal model.hidden_dim="
                              f"{self.hidden_dim} (mask-pooled positions join the queries)")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"model.adam_betas={self.adam_betas}: expected two numbers")


def _paper_train(epochs: int, lr_steps: tuple[int, ...]) -> TrainConfig:
    """Adam 1e-4 (groups and betas in `DerisConfig`), no weight decay, batch 32, step
    decay x0.1, gradient clipping at norm 0.15 (released configs)."""
    return TrainConfig(optimizer="adam", lr=1e-4, weight_decay=0.0, batch_size=32,
                       epochs=epochs, lr_schedule="step", lr_steps=lr_steps, lr_gamma=0.1,
                       grad_clip=0.15)


def _gres(model: DerisConfig) -> RunConfig:
    # 6 epochs, x0.1 in the last one (released MultiStepLR decay_steps=[6], 1-based; the
    # paper's Appendix C says the 5th: docs/deris.md, differences, 9).
    return RunConfig(method="deris", model=model,
                     data=DataConfig(format="grefcoco", image_size=384, max_text_length=50,
                                     nsc_prob=0.15),
                     train=_paper_train(6, (5,)))


def _res(model: DerisConfig) -> RunConfig:
    # 20 epochs, x0.1 at the 15th and 19th (1-based); mixed RefCOCO/+/g training.
    model.num_queries = 10
    return RunConfig(method="deris", model=model,
                     data=DataConfig(format="refcoco", image_size=384, max_text_length=20),
                     train=_paper_train(20, (14, 18)))


def _large() -> DerisConfig:
    """Swin-B (384, window 12) + BEiT-3 large, instance threshold 0.9."""
    return DerisConfig(backbone="swin_base", backbone_pretrain_size=384, cognition_dim=1024,
                       cognition_depth=24, cognition_heads=16, cognition_ffn_dim=4096,
                       thresholds=Thresholds(instance=0.9))


def deris_b() -> RunConfig:
    """DeRIS-B on gRefCOCO: Swin-S (Mask2Former COCO instance, model_final_1e7f22.pkl)
    at 384 + BEiT-3 base at 224, 20 queries, 3 rounds, NSC 0.15, threshold 0.7."""
    return _gres(DerisConfig())


def deris_l() -> RunConfig:
    """DeRIS-L on gRefCOCO: Swin-B 384 (model_final_f6e0f6.pkl) + BEiT-3 large,
    threshold 0.9."""
    return _gres(_large())


def deris_b_refcoco() -> RunConfig:
    """DeRIS-B on RefCOCO/+/g (RES): 10 queries, text length 20, threshold 0.9."""
    return _res(DerisConfig(thresholds=Thresholds(instance=0.9)))


def deris_l_refcoco() -> RunConfig:
    """DeRIS-L on RefCOCO/+/g (RES)."""
    return _res(_large())


def deris_tiny() -> RunConfig:
    """The same model with small numbers, for offline CPU runs on the synthetic benchmark
    (``refseg synth``): a trainable swin_nano (no pretrained weights offline), a 2-layer
    BEiT-3 over a word vocabulary built from the training sentences, few queries, points
    and channels, small images; the learning rate decays to zero within the demo's 9
    minutes."""
    model = DerisConfig(
        backbone="swin_nano",
        freeze_backbone=False,
        hidden_dim=64,
        encoder_layers=1,
        encoder_heads=4,
        encoder_points=2,
        encoder_ffn_dim=128,
        mask_dim=64,
        norm_groups=8,
        num_queries=8,
        rounds=3,
        decoder_heads=4,
        decoder_ffn_dim=128,
        cognition_size=64,
        cognition_patch_size=8,
        cognition_dim=64,
        cognition_depth=2,
        cognition_heads=4,
        cognition_ffn_dim=128,
        cognition_text_positions=32,
        cognition_drop_path=0.0,
        tokenizer="word",
        cognition_layer_heads=4,
        cognition_layer_ffn_dim=128,
        mask_pool_stride=2,
        # The existence probability read off BEiT-3's CLS token multiplies every refer
        # probability at test (Supp. Table 9, Table 6): on the synthetic benchmark, the
        # refer probabilities alone almost never answer no-target (docs/benchmarks.md).
        existence_source="cls",
        existence_at_test=True,
        existence_layers=1,
        existence_ffn_dim=128,
        dropout=0.0,
        num_points=256,
        backbone_lr_factor=1.0,  # random initialisation everywhere: one learning rate
        cognition_lr_factor=1.0,
        adam_betas=(0.9, 0.999),
        adam_eps=1e-8,
        amsgrad=False,
        thresholds=Thresholds(instance=0.5),  # on refer x existence, chosen on testA
    )
    return RunConfig(
        method="deris",
        model=model,
        data=DataConfig(format="grefcoco", root="data/synth",  # images: data/synth/images
                        image_size=64, max_text_length=16, nsc_prob=0.15, num_workers=0),
        # The linear decay ends at max_iters, about what 9 minutes allow on a 2-core CPU
        # (a decay over the 30 epochs would stop near its peak; docs/benchmarks.md).
        train=TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=16,
                          epochs=30, max_iters=3000, lr_schedule="linear", warmup_iters=50,
                          grad_clip=1.0, max_minutes=9.0, eval_max_samples=300, device="cpu"),
    )


VARIANTS = {
    "deris-b": deris_b,
    "deris-l": deris_l,
    "deris-b-refcoco": deris_b_refcoco,
    "deris-l-refcoco": deris_l_refcoco,
    "deris-tiny": deris_tiny,
}
