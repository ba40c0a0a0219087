"""Phrase-Object Alignment (InstAlign Sec. 3.2, Eqs. 2-4).

After a decoder block, every object query builds a soft phrase embedding from the words
it attends to, and the loss pulls the query towards that embedding:

    R = softmax(Q T^T / sqrt(C))   over the real (unpadded) words      (Eq. 2)
    P = R T                                                             (Eq. 3)
    L_POA(i) = 1 - cos(q_i, P_i)                                        (Eq. 4)

`poa_distance` returns L_POA for every query; the criterion adds it to the matching cost
(weighted by lambda_POA) and averages it over the matched queries as a loss.

Legend: B batch, Q queries, L words, C channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def phrase_object_relevance(
    queries: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """Phrase-object relevance matrix R (InstAlign Eq. 2).

    Args:
        queries: (B, Q, C) object queries after a decoder block.
        words: (B, L, C) word features after the same block.
        pad_mask: (B, L) bool, True at padding; padded words get zero weight.

    Returns:
        (B, Q, L) rows summing to 1 over the real words (all zero for a sentence without
        any real word, which no tokenizer produces but which must not give NaN).
    """
    scale = 1.0 / math.sqrt(queries.shape[-1])
    logits = torch.einsum("bqc,blc->bql", queries, words) * scale
    logits = logits.masked_fill(pad_mask[:, None, :], float("-inf"))
    relevance = logits.softmax(dim=-1)
    return torch.nan_to_num(relevance, nan=0.0)


def phrase_embeddings(
    queries: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """Soft phrase embedding of every query, P = R T (InstAlign Eq. 3).

    Returns:
        (B, Q, C).
    """
    return phrase_object_relevance(queries, words, pad_mask) @ words


def poa_distance(
    queries: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """L_POA(i) = 1 - cos(q_i, P_i) for every query (InstAlign Eq. 4).

    Args:
        queries: (B, Q, C).
        words: (B, L, C).
        pad_mask: (B, L) bool, True at padding.

    Returns:
        (B, Q) in [0, 2].
    """
    phrases = phrase_embeddings(queries, words, pad_mask)
    return 1.0 - F.cosine_similarity(queries, phrases, dim=-1, eps=1e-6)
