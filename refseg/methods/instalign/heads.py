"""Prediction heads on the object queries (InstAlign Supp. 11.3, Sec. 3.3).

- `RelevanceHead`: p_i = sigmoid(MLP(q_i)), the probability that query i is a referent.
- `NoTargetPredictor`: z = MLP(input), sigmoid(z) = probability that nothing is referred
  to (Eq. 7). Its input is one small module per row of the paper's Table 3(c), chosen by
  ``InstAlignConfig.no_target_input``:
  ``concat`` [g ; t_s] with g = sum_i p_i q_i (the paper's), ``global`` g,
  ``sentence`` t_s, ``mean`` the unweighted mean of all queries.

(The mask head m_i = MLP(q_i) . F_mask is the shared decoder's ``predict_masks``.)

Every input module maps queries (B, Q, C), relevance logits (B, Q) and the sentence
(B, Ct) to (B, out_dim); ``reads_sentence`` says whether it reads t_s.

Legend: B batch, Q queries, C hidden channels, Ct text channels.
"""

from __future__ import annotations

import torch
from torch import nn

from refseg.errors import ConfigError
from refseg.modeling.decoders import MLP


class RelevanceHead(nn.Module):
    """Relevance logits of every query."""

    def __init__(self, *, dim: int, num_layers: int = 2):
        super().__init__()
        self.mlp = MLP(dim, dim, 1, num_layers)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) normalised queries -> (B, Q) logits (p_i = sigmoid)."""
        return self.mlp(queries).squeeze(-1)


class RelevancePooledWithSentence(nn.Module):
    """[g ; t_s], g = sum_i p_i q_i (InstAlign Eq. 7, the paper's choice)."""

    reads_sentence = True

    def __init__(self, *, dim: int, text_dim: int):
        super().__init__()
        self.out_dim = dim + text_dim

    def forward(self, queries, relevance_logits, sentence):
        g = torch.einsum("bq,bqc->bc", relevance_logits.sigmoid(), queries)
        return torch.cat([g, sentence], dim=-1)


class RelevancePooled(nn.Module):
    """g = sum_i p_i q_i alone."""

    reads_sentence = False

    def __init__(self, *, dim: int, text_dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, queries, relevance_logits, sentence):
        return torch.einsum("bq,bqc->bc", relevance_logits.sigmoid(), queries)


class SentenceOnly(nn.Module):
    """t_s alone: the decision from the sentence embedding, blind to the image."""

    reads_sentence = True

    def __init__(self, *, dim: int, text_dim: int):
        super().__init__()
        self.out_dim = text_dim

    def forward(self, queries, relevance_logits, sentence):
        return sentence


class QueryMean(nn.Module):
    """The mean of all queries, ignoring relevance (Table 3(c), last row)."""

    reads_sentence = False

    def __init__(self, *, dim: int, text_dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, queries, relevance_logits, sentence):
        return queries.mean(dim=1)


NO_TARGET_INPUTS = {
    "concat": RelevancePooledWithSentence,
    "global": RelevancePooled,
    "sentence": SentenceOnly,
    "mean": QueryMean,
}


class NoTargetPredictor(nn.Module):
    """z = MLP(input) (InstAlign Eq. 7 and the line after it)."""

    def __init__(self, *, pooling: nn.Module, hidden_dim: int):
        super().__init__()
        self.pooling = pooling
        self.mlp = MLP(pooling.out_dim, hidden_dim, 1, 2)

    def forward(self, queries: torch.Tensor, relevance_logits: torch.Tensor,
                sentence: torch.Tensor) -> torch.Tensor:
        """No-target logits.

        Args:
            queries: (B, Q, C) final normalised queries.
            relevance_logits: (B, Q).
            sentence: (B, Ct) sentence embedding t_s.

        Returns:
            (B,) logits z.
        """
        return self.mlp(self.pooling(queries, relevance_logits, sentence)).squeeze(-1)


def build_no_target_predictor(name: str, *, dim: int, text_dim: int) -> NoTargetPredictor:
    if name not in NO_TARGET_INPUTS:
        raise ConfigError(
            f"model.no_target_input={name!r}: expected one of {', '.join(NO_TARGET_INPUTS)}"
        )
    return NoTargetPredictor(pooling=NO_TARGET_INPUTS[name](dim=dim, text_dim=text_dim),
                             hidden_dim=dim)
