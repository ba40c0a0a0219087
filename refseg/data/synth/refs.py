"""Which sentences each image gets, grouped into refs, for each published layout.

A ref is one referent set (one object, several, or none) with its sentences. The
generalized layouts (grefcoco, refzom) mix single / multi / no-target sentences at
`SHARES`; the share of each kind is steered per split by always asking first for the kind
furthest below its target share. The classic layouts hold single-object refs only; the
robust one (rrefcoco) adds near-miss sentences marked ``exist=False`` to each ref.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from refseg.data.synth.expressions import Expression, Sampler, realize

KINDS = ("single", "multi", "none")
SHARES = {"single": 0.6, "multi": 0.3, "none": 0.1}  # gRefCOCO-like sentence mix
SENTENCES_PER_IMAGE = 6
REFS_PER_IMAGE = 3  # classic layouts: objects referred to per image
SENTENCES_PER_REF = (1, 2, 2, 3)  # drawn uniformly: two on average, as in RefCOCO
_WORDING_TRIES = 4


@dataclass
class Sentence:
    text: str
    expr: Expression
    exist: bool = True  # False: an R-RefCOCO negative, describing nothing here


@dataclass
class RefPlan:
    """One ref: object indices it refers to (sorted; empty for no target) and sentences."""

    targets: tuple[int, ...]
    sentences: list[Sentence] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "none" if not self.targets else "single" if len(self.targets) == 1 else "multi"


class ShareKeeper:
    """Counts sentences of each kind and orders kinds by how far each is below its share."""

    def __init__(self, shares: dict[str, float] = SHARES):
        self.shares = shares
        self.counts = dict.fromkeys(shares, 0)

    def order(self) -> list[str]:
        total = sum(self.counts.values()) + 1
        return sorted(self.shares, key=lambda k: self.counts[k] - self.shares[k] * total)

    def add(self, kind: str) -> None:
        self.counts[kind] += 1


class _Writer:
    """Words expressions for one image without repeating a sentence."""

    def __init__(self, sampler: Sampler, rng: random.Random):
        self.sampler = sampler
        self.rng = rng
        self.used: set[str] = set()

    def word(self, expr: Expression | None) -> str | None:
        if expr is None:
            return None
        for _ in range(_WORDING_TRIES):
            text = realize(expr, self.rng)
            if text not in self.used:
                self.used.add(text)
                return text
        return None


def plan_generalized(sampler: Sampler, rng: random.Random, keeper: ShareKeeper) -> list[RefPlan]:
    """Refs of one image for grefcoco / refzom: `SENTENCES_PER_IMAGE` sentences of mixed
    kinds; single-object sentences cycle over the objects so that each image's sentences
    point at different things."""
    writer = _Writer(sampler, rng)
    order = list(range(len(sampler.things)))
    rng.shuffle(order)
    refs: dict[tuple[int, ...], RefPlan] = {}
    nones: list[RefPlan] = []
    next_single = 0
    for _ in range(SENTENCES_PER_IMAGE):
        for kind in keeper.order():
            if kind == "single":
                expr, next_single = _next_single(sampler, order, next_single)
            elif kind == "multi":
                expr = sampler.multi(avoid={frozenset(t) for t in refs if len(t) >= 2})
            else:
                expr = sampler.no_target()
            text = writer.word(expr)
            if text is None:
                continue
            targets = tuple(sorted(sampler.resolve(expr)))
            if targets:
                refs.setdefault(targets, RefPlan(targets)).sentences.append(Sentence(text, expr))
            else:
                nones.append(RefPlan((), [Sentence(text, expr)]))
            keeper.add(kind)
            break
    return [*refs.values(), *nones]


def _next_single(sampler: Sampler, order: list[int], start: int):
    for k in range(len(order)):
        expr = sampler.single(order[(start + k) % len(order)])
        if expr is not None:
            return expr, start + k + 1
    return None, start


def plan_classic(sampler: Sampler, rng: random.Random, *, negatives: int = 0) -> list[RefPlan]:
    """Single-object refs of one image (refcoco), each with 1-3 sentences; with
    ``negatives`` > 0 each ref also gets that many near misses of its object (rrefcoco)."""
    writer = _Writer(sampler, rng)
    order = list(range(len(sampler.things)))
    rng.shuffle(order)
    plans = []
    for target in order[:REFS_PER_IMAGE]:
        plan = RefPlan((target,))
        for _ in range(rng.choice(SENTENCES_PER_REF)):
            expr = sampler.single(target)
            text = writer.word(expr)
            if text is not None:
                plan.sentences.append(Sentence(text, expr))
        if not plan.sentences:
            continue
        for _ in range(negatives):
            expr = sampler.no_target(near=target) or sampler.no_target()
            text = writer.word(expr)
            if text is not None:
                plan.sentences.append(Sentence(text, expr, exist=False))
        plans.append(plan)
    return plans
