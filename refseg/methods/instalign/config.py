"""InstAlign's configuration: defaults are the paper's main setting (Swin-B, BERT-base, 480).

Named run configs are small functions returning a full `RunConfig`:
``instalign-swin-b`` (the paper) and ``instalign-tiny`` (the same code with small numbers,
trained offline on CPU on the synthetic benchmark). Every size is a field, so any of them
can be changed with ``model.<field>=<value>`` overrides.
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

INSTANCE_SUPERVISIONS = ("poa", "mask2former", "none")
AGGREGATIONS = ("ia", "ia_no_prelu", "fixed")
NO_TARGET_INPUTS = ("concat", "global", "sentence", "mean")
EARLY_FUSIONS = ("pwam", "none")
FUSION_GATES = ("shut", "open")
TEXT_ENCODERS = ("bert", "bert-random")
TOKENIZERS = ("bert", "word")
WEIGHT_LAYOUTS = ("original", "mask2former", "hf")  # refseg.modeling.backbones.swin_weights


@dataclass
class InstAlignConfig:
    """InstAlign model, loss and decision settings.

    Ablation switches (the paper's Table 3): ``instance_supervision`` (a), ``aggregation``
    (b), ``no_target_input`` (c), ``num_queries`` (e). Loss weights the paper lost are
    documented in docs/instalign.md.
    """

    # Visual encoder: a variant of refseg.modeling.backbones.swin, optional local weights.
    backbone: str = "swin_base"  # a name in refseg.modeling.backbones.swin.SWIN_VARIANTS
    backbone_pretrain_size: int = 384  # swin_base only: 384 (window 12, 22k) or 224 (window 7)
    backbone_weights: str = ""  # "" = random init (tests, tiny runs)
    # original: Swin release .pth | mask2former: model-zoo .pkl | hf: Hugging Face directory
    backbone_weights_layout: str = "original"
    drop_path_rate: float = 0.3
    # Text encoder: pretrained BERT from a local directory, or a small random BERT.
    text_encoder: str = "bert"  # bert | bert-random
    text_encoder_path: str = ""  # local bert-base-uncased dir (config, vocab, weights)
    tokenizer: str = "bert"  # bert (vocab of text_encoder_path) | word (training sentences)
    # Sizes of a random BERT (bert-random), and of a "bert" rebuilt for a checkpoint's
    # weights; a pretrained BERT brings its own from its directory. FFN = 4 x text_dim.
    text_dim: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_max_positions: int = 512
    # Early fusion: language-aware visual features (PWAM after every Swin stage, as the
    # ReLA/LAVT encoder InstAlign builds on; see docs/instalign.md) or none.
    early_fusion: str = "pwam"
    fusion_heads: int = 1
    # PWAM output fed back into the next Swin stage by LAVT's language gate: "shut" as in
    # the released LAVT/ReLA code (zero-initialised, it never learns), or "open" (learns).
    fusion_gate: str = "shut"
    # Pixel decoder (MSDeformAttn encoder over strides 8/16/32 + FPN to stride 4).
    hidden_dim: int = 256
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_ffn_dim: int = 1024
    encoder_points: int = 4
    mask_dim: int = 256
    # Transformer decoder: blocks of masked cross-attn -> object-text cross-attn ->
    # self-attn -> FFN, round-robin over the three coarsest scales.
    num_queries: int = 100
    decoder_layers: int = 9
    decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    relevance_mlp_layers: int = 2
    no_target_input: str = "concat"  # concat [g; t_s] | global g | sentence t_s | mean
    aggregation: str = "ia"  # ia | ia_no_prelu | fixed
    # Instance supervision and matching (Eqs. 1, 10-12).
    instance_supervision: str = "poa"  # poa | mask2former (no POA) | none
    class_weight: float = 2.0  # lambda_cls: relevance BCE, cost and loss
    mask_weight: float = 5.0  # lambda_mask: point-sampled mask BCE
    dice_weight: float = 5.0  # lambda_dice
    poa_weight: float = 2.0  # lambda_POA, cost and loss (lost in the paper; chosen)
    unmatched_weight: float = 0.1  # weight of BCE(p_i, 0) for unmatched queries
    num_points: int = 12544  # 112 * 112 sampled points per mask
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    # Total loss L = ins_weight L_ins + merged_weight L_mask + no_target_weight L_nt (Eq. 8).
    ins_weight: float = 1.0
    merged_weight: float = 1.0  # BCE of the merged mask
    merged_dice_weight: float = 0.0  # optional dice on the merged mask (not in the paper)
    no_target_weight: float = 0.1  # ReLA: CE(mask) + 0.1 CE(minimap) + 0.1 CE(no-target)
    no_target_pos_weight: float = 1.0  # BCE weight of no-target samples in L_nt (1 = paper)
    # Learning-rate factors of the pretrained parts (Mask2Former/ReLA: Swin x0.1, BERT x1).
    backbone_lr_factor: float = 0.1
    text_encoder_lr_factor: float = 1.0
    thresholds: Thresholds = field(default_factory=Thresholds)

    def validate(self) -> None:
        """Raise ConfigError on a value outside a field's choices or range."""
        check_choices(self, "model", {
            "instance_supervision": INSTANCE_SUPERVISIONS,
            "no_target_input": NO_TARGET_INPUTS,
            "aggregation": AGGREGATIONS,
            "early_fusion": EARLY_FUSIONS,
            "fusion_gate": FUSION_GATES,
            "text_encoder": TEXT_ENCODERS,
            "tokenizer": TOKENIZERS,
            "backbone_weights_layout": WEIGHT_LAYOUTS,
        })
        check_at_least(self, "model", ("num_queries", "decoder_layers", "hidden_dim",
                                       "mask_dim", "num_points", "text_dim", "text_heads",
                                       "fusion_heads", "encoder_heads", "encoder_points",
                                       "encoder_ffn_dim", "decoder_heads", "decoder_ffn_dim"), 1)
        check_at_least(self, "model", ("text_layers", "encoder_layers"), 0)
        check_divides(self, "model", (("hidden_dim", "encoder_heads"),
                                      ("hidden_dim", "decoder_heads"),
                                      ("text_dim", "text_heads")))
        if self.text_encoder == "bert" and self.tokenizer != "bert":
            raise ConfigError("model.tokenizer: a pretrained BERT needs its own tokenizer (bert)")


def instalign_swin_b() -> RunConfig:
    """The paper's setting: Swin-B (384, ImageNet-22k) + BERT-base, 480x480, 100 queries,
    AdamW (backbone x0.1), batch 32, 20 epochs, linear decay, weight decay 0.05, full-model
    gradient clipping at norm 0.01 (Mask2Former/ReLA). The paper's learning rate and decay
    end were lost from its text: lr 1e-4 decaying to 0 is refseg's choice."""
    return RunConfig(
        method="instalign",
        model=InstAlignConfig(),
        data=DataConfig(format="grefcoco", image_size=480, max_text_length=20),
        train=TrainConfig(
            optimizer="adamw",
            lr=1e-4,
            weight_decay=0.05,
            batch_size=32,
            epochs=20,
            lr_schedule="linear",
            grad_clip=0.01,
        ),
    )


def instalign_tiny() -> RunConfig:
    """The same model with small numbers, for offline CPU runs on the synthetic benchmark
    (``refseg synth``; the demo draws it at 64 px): swin_nano, a small random BERT over a word
    vocabulary built from the training sentences, 12 queries, 3 decoder blocks, 64 px.

    Chosen for learning within minutes on a 2-core CPU (docs/instalign-tiny.md): everything is
    trained from scratch, so the backbone learns at the full rate; small batches (more
    updates per second); the merged-mask (BCE + dice) and no-target terms weighted 5 so that
    the outputs that are scored get a strong signal next to the ten instance terms, with the
    rare no-target sentences weighted 5x inside L_nt; relevance trained harder (unmatched
    queries at full weight, lambda_cls 5: IA weighs every query by p_i) and LAVT's language
    gate open (nothing pretrained to keep); the linear decay ends at ``max_iters`` (about
    what 9 minutes allow), the time budget stops a slower machine earlier."""
    model = InstAlignConfig(
        backbone="swin_nano",
        drop_path_rate=0.0,
        text_encoder="bert-random",
        tokenizer="word",
        text_dim=64,
        text_layers=2,
        text_heads=2,
        text_max_positions=32,
        fusion_heads=1,
        fusion_gate="open",
        hidden_dim=64,
        encoder_layers=1,
        encoder_heads=4,
        encoder_ffn_dim=128,
        encoder_points=4,
        mask_dim=64,
        num_queries=12,
        decoder_layers=3,
        decoder_heads=4,
        decoder_ffn_dim=128,
        num_points=256,  # the 16 x 16 mask pixels at 64 px (docs/instalign-tiny.md, seventh round)
        class_weight=5.0,
        unmatched_weight=1.0,
        merged_weight=5.0,
        merged_dice_weight=5.0,
        no_target_weight=5.0,
        no_target_pos_weight=5.0,  # the 10 % no-target sentences count 5x in L_nt
        backbone_lr_factor=1.0,
    )
    return RunConfig(
        method="instalign",
        model=model,
        data=DataConfig(
            format="grefcoco",
            root="data/synth",
            image_size=64,
            max_text_length=16,  # synthetic sentences: up to 12 words + [CLS] [SEP]
            num_workers=0,
        ),
        train=TrainConfig(
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.01,
            batch_size=8,
            epochs=30,
            max_iters=5000,
            lr_schedule="linear",
            warmup_iters=50,
            grad_clip=1.0,
            max_minutes=9.0,
            eval_max_samples=300,
            device="cpu",
        ),
    )


VARIANTS = {
    "instalign-swin-b": instalign_swin_b,
    "instalign-tiny": instalign_tiny,
}
