"""A test-only method for the engine tests: a tiny conv net conditioned on text by FiLM.

It implements `RefSegModel` for real (forward, loss, infer; the default decide) so that
training, checkpoints, evaluation and prediction are exercised without any of the paper
methods. Registered by the tests through ``refseg.methods.registry._MODULES``.

Legend: B batch, L tokens, C channels, S input side, S' = S / 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refseg.config import DataConfig, RunConfig, TrainConfig
from refseg.methods.registry import Method
from refseg.modeling.base import RefSegModel, Thresholds
from refseg.modeling.contracts import Batch, Inference
from refseg.modeling.text.tokenizers import WordTokenizer, load_tokenizer as _load_tokenizer

@dataclass
class TinyFilmConfig:
    channels: int = 8
    text_dim: int = 8
    vocab_size: int = 0  # 0 = from the tokenizer
    dropout: float = 0.1
    spare_head: bool = False  # build a head the loss never reads (a misbuilt model)
    thresholds: Thresholds = field(default_factory=Thresholds)


class TinyFilm(RefSegModel):
    """Two stride-2 convs, FiLM by the mean word embedding, a mask and a no-target head."""

    def __init__(self, *, vocab_size: int, channels: int, text_dim: int, dropout: float,
                 spare_head: bool = False):
        super().__init__()
        self.spare = nn.Linear(channels, 1) if spare_head else None
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        )
        self.embed = nn.Embedding(vocab_size, text_dim)
        self.film = nn.Linear(text_dim, 2 * channels)
        self.drop = nn.Dropout2d(dropout)
        self.mask_head = nn.Conv2d(channels, 1, 3, padding=1)
        self.no_target_head = nn.Linear(channels + text_dim, 1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        feats = self.stem(batch.images)  # (B, C, S', S')
        keep = (~batch.text_pad_mask).float()  # (B, L)
        words = self.embed(batch.input_ids) * keep[..., None]
        sentence = words.sum(1) / keep.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        gamma, beta = self.film(sentence).chunk(2, dim=1)
        feats = F.relu(feats * (1 + gamma[..., None, None]) + beta[..., None, None])
        feats = self.drop(feats)
        merged = self.mask_head(feats)[:, 0]  # (B, S', S')
        pooled = torch.cat([feats.mean(dim=(2, 3)), sentence], dim=1)
        out = {"merged": merged, "no_target": self.no_target_head(pooled)[:, 0]}
        if self.spare is not None:
            out["spare"] = self.spare(feats.mean(dim=(2, 3)))  # an output the loss ignores
        return out

    def loss(self, outputs, batch: Batch) -> dict[str, torch.Tensor]:
        side = outputs["merged"].shape[-1]
        gt = torch.stack([t.merged for t in batch.targets])[:, None]
        gt = F.adaptive_max_pool2d(gt, side)[:, 0]
        nt = torch.tensor([float(t.no_target) for t in batch.targets], device=gt.device)
        # Referents are small: weigh foreground up so that masks do not collapse to empty.
        pos_weight = torch.tensor(4.0, device=gt.device)
        mask = F.binary_cross_entropy_with_logits(outputs["merged"], gt, pos_weight=pos_weight)
        no_target = F.binary_cross_entropy_with_logits(outputs["no_target"], nt)
        return {"loss": mask + no_target, "mask": mask, "no_target": no_target}

    def infer(self, outputs) -> Inference:
        merged = outputs["merged"]
        nt_prob = outputs["no_target"].sigmoid()
        return Inference(
            merged_logits=merged,
            no_target_prob=nt_prob,
            instance_logits=merged[:, None],
            instance_scores=(1 - nt_prob)[:, None],
        )


def build_model(config: TinyFilmConfig, tokenizer: WordTokenizer) -> TinyFilm:
    return TinyFilm(
        vocab_size=config.vocab_size or tokenizer.vocab_size,
        channels=config.channels,
        text_dim=config.text_dim,
        dropout=config.dropout,
        spare_head=config.spare_head,
    )


def build_tokenizer(
    config: TinyFilmConfig, data: DataConfig, sentences: list[str]
) -> WordTokenizer:
    return WordTokenizer.build(sentences, max_length=data.max_text_length)


def load_tokenizer(config: TinyFilmConfig, directory: str) -> WordTokenizer:
    return _load_tokenizer(directory)


METHOD = Method("tinyfilm", TinyFilmConfig, build_model, build_tokenizer, load_tokenizer)


def tinyfilm_test() -> RunConfig:
    return RunConfig(
        method="tinyfilm",
        model=TinyFilmConfig(),
        data=DataConfig(format="grefcoco", image_size=32, max_text_length=6, num_workers=0),
        train=TrainConfig(
            lr=1e-2, weight_decay=0.0, batch_size=2, epochs=3, checkpoint_every=3, log_every=1,
            device="cpu",
        ),
    )


VARIANTS = {"tinyfilm-test": tinyfilm_test}


# --- helpers for the engine tests ---------------------------------------------------------


def register(monkeypatch) -> None:
    """Make ``tinyfilm`` the only method the registry knows, for one test."""
    import refseg.methods.registry as registry

    monkeypatch.setattr(registry, "_MODULES", {"tinyfilm": "engine_tinyfilm"})


def benchmark(folder: Path) -> Path:
    """The readers' tiny gRefCOCO benchmark with random images; returns the data folder."""
    from builders import IMAGES, tiny_benchmark, write_images

    data = tiny_benchmark("grefcoco", Path(folder) / "data")
    write_images(data / "images", IMAGES)
    return data


def run_config(data: Path, *overrides: str) -> RunConfig:
    """``tinyfilm-test`` on the tiny benchmark, with overrides."""
    from refseg.engine.trainer import resolve_config

    return resolve_config(
        "tinyfilm-test", [f"data.root={data}", f"data.images={data / 'images'}", *overrides]
    )


def synth(folder: Path, images: int = 12) -> Path:
    """A small synthetic gRefCOCO benchmark (``refseg synth``), 48 x 48 images."""
    from refseg.data.synth import generate

    return generate(Path(folder) / "synth", layout="grefcoco", images=images, size=48, seed=0)
