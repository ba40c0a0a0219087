"""Referring expressions over a scene: the grammar, its meaning, and sentence sampling.

An `Expression` is the meaning of a sentence; `resolve` says which objects it refers to
(a set, empty when nothing matches) or ``None`` when a reader could hesitate (two
candidates for "the", a near tie for "leftmost", an object near the image middle for "on
the left"). Only expressions that resolve to a set are ever emitted, so every sentence is
unambiguous by construction; `realize` words them and `parse` reads them back.

Grammar (S: singular noun phrase, P: plural, L: landmark, a singular S):
    the      "the S"                                       exactly one match
    count    "the two P", "three P"                        exactly N matches
    all      "all P", "all the P", "every S"               every match (2+)
    plural   "the P"                                       every match (2+)
    extreme  "the leftmost S", "the top S", "the S furthest to the right"
    half     "the S on the left", "the P at the bottom"    by image half
    ordinal  "the second S from the left"
    relation "the S above the L", "the P to the left of the L"
    noun phrase  [small|big|large] [colour] (shape|"shape"|"object")[s]
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from itertools import combinations

from refseg.data.synth.scenes import COLORS, SHAPES, SIZES

FORMS = ("the", "count", "all", "plural", "extreme", "half", "ordinal", "relation")
DIRECTIONS = ("left", "right", "top", "bottom")
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}
ORDINALS = {2: "second", 3: "third"}

# Geometry, as fractions of the image side: a position word is used only when the
# objects it separates are at least MARGIN apart, and "on the left" only when no
# candidate lies within BAND of the middle line.
MARGIN = 0.08
BAND = 0.1
# "A above B" holds when A is at least twice as far up as it is to the side, and clearly
# fails when it is 1.5 times further to the side than up (or not up at all).
DOMINANT = 2.0
SIDEWAYS = 1.5


@dataclass(frozen=True)
class Thing:
    """What the grammar sees of one object: attributes and centre (pixels)."""

    shape: str
    color: str
    size: str
    x: float
    y: float


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: the attributes it names (None: not named)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None

    def matches(self, thing: Thing) -> bool:
        return ((self.shape is None or self.shape == thing.shape)
                and (self.color is None or self.color == thing.color)
                and (self.size is None or self.size == thing.size))

    @property
    def empty(self) -> bool:
        return self.shape is None and self.color is None and self.size is None


@dataclass(frozen=True)
class Expression:
    """The meaning of one sentence.

    Attributes:
        form: one of `FORMS`.
        head: the noun phrase naming the candidates.
        plural: whether the sentence speaks of a set (count, all, plural, and plural
            half/relation forms).
        number: N for ``count``; k for ``ordinal``.
        direction: one of `DIRECTIONS` (extreme, half, ordinal, relation; relation
            "top" reads "above", "bottom" reads "below").
        landmark: the reference object's phrase (relation only).
    """

    form: str
    head: Phrase
    plural: bool = False
    number: int | None = None
    direction: str | None = None
    landmark: Phrase | None = None


# --------------------------------------------------------------------------- meaning


def resolve(expr: Expression, things: list[Thing], side: int) -> frozenset[int] | None:
    """Indices of the objects ``expr`` refers to; empty if none; None if ambiguous."""
    cands = [i for i, t in enumerate(things) if expr.head.matches(t)]
    if expr.form == "the":
        return _one(cands)
    if expr.form == "count":
        if len(cands) > expr.number:
            return None  # "the two squares" among three: which two?
        return frozenset(cands) if len(cands) == expr.number else frozenset()
    if expr.form in ("all", "plural"):
        return _set_of(cands)
    if expr.form == "extreme":
        return _extreme(cands, things, expr.direction, side)
    if expr.form == "half":
        return _half(cands, things, expr, side)
    if expr.form == "ordinal":
        return _ordinal(cands, things, expr, side)
    if expr.form == "relation":
        return _relation(cands, things, expr, side)
    raise ValueError(f"unknown form {expr.form!r}")


def no_target_kind(expr: Expression, things: list[Thing]) -> str:
    """Why a sentence that refers to nothing refers to nothing, the first that applies of:

    - ``absent shape`` / ``absent colour`` / ``absent size``: the sentence names a value
      that no object in the scene has ("the hexagon" with no hexagon); checked in this
      order, on the head phrase and then the landmark;
    - ``binding``: every named value is in the scene, but no object has them together
      ("the green star" with a green circle and a red star);
    - ``count or position``: objects match the phrases, but not the count, order or place
      ("the three squares" with two, "the square on the left" with squares on the right).
    """
    absent = absent_value(expr, things)
    if absent is not None:
        return ABSENT_KINDS[absent[0]]
    phrases = [expr.head] + ([expr.landmark] if expr.landmark is not None else [])
    if any(not any(phrase.matches(t) for t in things) for phrase in phrases):
        return "binding"
    return "count or position"


ABSENT_KINDS = {"shape": "absent shape", "color": "absent colour", "size": "absent size"}


def absent_value(expr: Expression, things: list[Thing]) -> tuple[str, str] | None:
    """The first (attribute, value) the sentence names that no object has, attributes in
    the order shape, colour, size, each on the head phrase and then the landmark; None when
    every named value is in the scene."""
    phrases = [expr.head] + ([expr.landmark] if expr.landmark is not None else [])
    for attr in ABSENT_KINDS:
        for phrase in phrases:
            value = getattr(phrase, attr)
            if value is not None and all(getattr(t, attr) != value for t in things):
                return attr, value
    return None


def _one(chosen: list[int]) -> frozenset[int] | None:
    """A singular reference: one object, none (no target), or ambiguous."""
    if len(chosen) == 1:
        return frozenset(chosen)
    return frozenset() if not chosen else None


def _set_of(chosen: list[int]) -> frozenset[int] | None:
    """A plural reference: two or more objects, none, or ill-formed for a single one."""
    if len(chosen) == 1:
        return None
    return frozenset(chosen)


def _coordinate(thing: Thing, direction: str) -> float:
    """Position along ``direction``, smallest first ("left": x; "bottom": -y)."""
    return {"left": thing.x, "right": -thing.x, "top": thing.y, "bottom": -thing.y}[direction]


def _ranked(cands, things, direction, side, needed) -> list[int] | None:
    """Candidates sorted along ``direction``; None if the first ``needed`` are not
    separated from each other and from the next one by the margin."""
    order = sorted(cands, key=lambda i: _coordinate(things[i], direction))
    coords = [_coordinate(things[i], direction) for i in order[:needed + 1]]
    if any(b - a < MARGIN * side for a, b in zip(coords, coords[1:])):
        return None
    return order


def _extreme(cands, things, direction, side):
    if not cands:
        return frozenset()
    if len(cands) == 1:
        return None  # "the leftmost square" of one square: the position says nothing
    order = _ranked(cands, things, direction, side, 1)
    return None if order is None else frozenset(order[:1])


def _ordinal(cands, things, expr, side):
    if len(cands) < expr.number:
        return frozenset()  # "the third square from the left" with two squares
    order = _ranked(cands, things, expr.direction, side, expr.number)
    return None if order is None else frozenset([order[expr.number - 1]])


def _side_offset(thing: Thing, direction: str, side: int) -> float:
    """Distance from the middle line into the named half (negative: the other half)."""
    pos = thing.x if direction in ("left", "right") else thing.y
    return side / 2 - pos if direction in ("left", "top") else pos - side / 2


def _half(cands, things, expr, side):
    offsets = [_side_offset(things[i], expr.direction, side) for i in cands]
    if any(abs(o) < BAND * side for o in offsets):
        return None
    chosen = [i for i, o in zip(cands, offsets) if o > 0]
    return _set_of(chosen) if expr.plural else _one(chosen)


def relation_holds(thing: Thing, landmark: Thing, direction: str, side: int) -> bool | None:
    """Whether ``thing`` is clearly left of / right of / above / below ``landmark``.

    True: the offset along the direction is at least the margin and `DOMINANT` times
    the offset across; False: on the other side, or `SIDEWAYS` times further across than
    along; None: in between.
    """
    dx, dy = thing.x - landmark.x, thing.y - landmark.y
    along, across = {"left": (-dx, dy), "right": (dx, dy), "top": (-dy, dx),
                     "bottom": (dy, dx)}[direction]
    across = abs(across)
    if along >= MARGIN * side and along >= DOMINANT * across:
        return True
    if along <= 0 or across >= SIDEWAYS * along:
        return False
    return None


def _relation(cands, things, expr, side):
    if expr.landmark == expr.head:
        return None
    anchors = [i for i, t in enumerate(things) if expr.landmark.matches(t)]
    if len(anchors) != 1:
        return frozenset() if not anchors else None
    anchor = things[anchors[0]]
    chosen = []
    for i in cands:
        if i == anchors[0]:
            continue
        holds = relation_holds(things[i], anchor, expr.direction, side)
        if holds is None:
            return None
        if holds:
            chosen.append(i)
    return _set_of(chosen) if expr.plural else _one(chosen)


# --------------------------------------------------------------------------- words

_EXTREME_WORDS = {
    "left": ("leftmost",), "right": ("rightmost",),
    "top": ("topmost", "highest", "top"), "bottom": ("lowest", "bottom", "bottommost"),
}
_EXTREME_AFTER = {"left": "furthest to the left", "right": "furthest to the right"}
_HALF_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top",
               "bottom": "at the bottom"}
_RELATION_WORDS = {
    "left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
    "top": ("above",), "bottom": ("below", "under"),
}
_SIZE_WORDS = {"small": ("small",), "big": ("big", "large")}
_NOUNS = ("object", "shape")


def noun_phrase(phrase: Phrase, plural: bool, rng: random.Random) -> str:
    words = []
    if phrase.size:
        words.append(rng.choice(_SIZE_WORDS[phrase.size]))
    if phrase.color:
        words.append(phrase.color)
    words.append(phrase.shape or rng.choice(_NOUNS))
    return " ".join(words) + ("s" if plural else "")


def realize(expr: Expression, rng: random.Random) -> str:
    """One wording of ``expr`` (lower case, words separated by single spaces)."""
    s = noun_phrase(expr.head, False, rng)
    p = noun_phrase(expr.head, True, rng)
    form, d = expr.form, expr.direction
    if form == "the":
        return f"the {s}"
    if form == "count":
        return rng.choice(("the ", "")) + f"{NUMBERS[expr.number]} {p}"
    if form == "all":
        return rng.choice((f"all {p}", f"all the {p}", f"every {s}"))
    if form == "plural":
        return f"the {p}"
    if form == "extreme":
        options = [f"the {w} {s}" for w in _EXTREME_WORDS[d]]
        if d in _EXTREME_AFTER:
            options.append(f"the {s} {_EXTREME_AFTER[d]}")
        return rng.choice(options)
    if form == "half":
        return f"the {p if expr.plural else s} {_HALF_WORDS[d]}"
    if form == "ordinal":
        return f"the {ORDINALS[expr.number]} {s} from the {d}"
    if form == "relation":
        landmark = noun_phrase(expr.landmark, False, rng)
        return f"the {p if expr.plural else s} {rng.choice(_RELATION_WORDS[d])} the {landmark}"
    raise ValueError(f"unknown form {form!r}")


_SIZE_RE = "|".join(w for ws in _SIZE_WORDS.values() for w in ws)
_NP = (rf"(?:({_SIZE_RE}) )?(?:({'|'.join(COLORS)}) )?"
       rf"({'|'.join(SHAPES + _NOUNS)})(s?)")
_NUM_RE = "|".join(NUMBERS.values())
_ORD_RE = "|".join(ORDINALS.values())
_EXT_RE = "|".join(w for ws in _EXTREME_WORDS.values() for w in ws)
_REL_RE = "|".join(sorted((w for ws in _RELATION_WORDS.values() for w in ws), key=len,
                          reverse=True))
_PATTERNS = [
    ("count", re.compile(rf"(?:the )?({_NUM_RE}) {_NP}")),
    ("all", re.compile(rf"(?:all|all the|every) {_NP}")),
    ("extreme", re.compile(rf"the ({_EXT_RE}) {_NP}")),
    ("extreme_after", re.compile(rf"the {_NP} furthest to the (left|right)")),
    ("half", re.compile(rf"the {_NP} (on the left|on the right|at the top|at the bottom)")),
    ("ordinal", re.compile(rf"the ({_ORD_RE}) {_NP} from the (left|right|top|bottom)")),
    ("relation", re.compile(rf"the {_NP} ({_REL_RE}) the {_NP}")),
    ("the", re.compile(rf"the {_NP}")),
]


def _phrase(size, color, noun) -> Phrase:
    size = next((k for k, ws in _SIZE_WORDS.items() if size in ws), None)
    return Phrase(shape=None if noun in _NOUNS else noun, color=color, size=size)


def _lookup(table: dict, word: str):
    return next(k for k, ws in table.items() if word in (ws if isinstance(ws, tuple) else (ws,)))


def parse(sentence: str) -> Expression:
    """The `Expression` a sentence of this grammar means (inverse of `realize`).

    Raises:
        ValueError: the sentence is not in the grammar.
    """
    for name, pattern in _PATTERNS:
        m = pattern.fullmatch(sentence)
        if m is None:
            continue
        g = m.groups()
        if name == "count":
            number = _lookup(NUMBERS, g[0])
            return Expression("count", _phrase(*g[1:4]), plural=True, number=number)
        if name == "all":
            return Expression("all", _phrase(*g[0:3]), plural=True)
        if name == "extreme":
            return Expression("extreme", _phrase(*g[1:4]), direction=_lookup(_EXTREME_WORDS, g[0]))
        if name == "extreme_after":
            return Expression("extreme", _phrase(*g[0:3]), direction=g[4])
        if name == "half":
            return Expression("half", _phrase(*g[0:3]), plural=g[3] == "s",
                              direction=_lookup(_HALF_WORDS, g[4]))
        if name == "ordinal":
            return Expression("ordinal", _phrase(*g[1:4]), number=_lookup(ORDINALS, g[0]),
                              direction=g[5])
        if name == "relation":
            return Expression("relation", _phrase(*g[0:3]), plural=g[3] == "s",
                              direction=_lookup(_RELATION_WORDS, g[4]),
                              landmark=_phrase(*g[5:8]))
        form = "plural" if g[3] == "s" else "the"
        return Expression(form, _phrase(*g[0:3]), plural=form == "plural")
    raise ValueError(f"not a sentence of the synthetic grammar: {sentence!r}")


# --------------------------------------------------------------------------- sampling

# Form weights: attribute phrases dominate (as in gRefCOCO), every spatial form stays
# frequent enough to be learnt.
_SINGLE_FORMS = {"the": 6, "extreme": 2, "relation": 1.5, "ordinal": 0.75, "half": 1.5}
_MULTI_FORMS = {"plural": 3, "all": 3, "count": 2, "half": 1, "relation": 1}
# No-target kinds: most name a shape or colour the scene lacks ("the hexagon", "the green
# circle" with no green), which a model can learn to reject within minutes on CPU; the rest
# are near misses (a swapped attribute, a wrong place, a count too high), the hard cases.
_NONE_KINDS = {"absent": 6, "attribute": 2, "spatial": 1, "count": 1}
_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}


def _weighted_order(weights: dict[str, float], rng: random.Random) -> list[str]:
    """All keys, in a random order where heavier keys tend to come first."""
    return sorted(weights, key=lambda k: rng.random() ** (1.0 / weights[k]), reverse=True)


def _subphrases(thing: Thing, rng: random.Random, *, allow_empty: bool) -> list[Phrase]:
    """Phrases naming some of ``thing``'s attributes, shuffled; naming the shape first."""
    attrs = {"shape": thing.shape, "color": thing.color, "size": thing.size}
    out = [Phrase(**{k: attrs[k] for k in keys})
           for n in range(0 if allow_empty else 1, 4) for keys in combinations(attrs, n)]
    rng.shuffle(out)
    # Most sentences name the shape, as people do; bare "the red one" stays possible.
    out.sort(key=lambda p: p.shape is None and rng.random() < 0.8)
    return out


class Sampler:
    """Samples unambiguous expressions of one scene with a wanted referent count."""

    def __init__(self, things: list[Thing], side: int, rng: random.Random):
        self.things = things
        self.side = side
        self.rng = rng

    def resolve(self, expr: Expression) -> frozenset[int] | None:
        return resolve(expr, self.things, self.side)

    # -- single target
    def single(self, target: int) -> Expression | None:
        """An expression referring to exactly ``target``."""
        for form in _weighted_order(_SINGLE_FORMS, self.rng):
            for expr in self._candidates(form, target, plural=False):
                if self.resolve(expr) == {target}:
                    return expr
        return None

    # -- two or more targets
    def multi(self, avoid: set[frozenset[int]]) -> Expression | None:
        """An expression referring to two or more objects, preferring sets not in ``avoid``."""
        seeds = list(range(len(self.things)))
        self.rng.shuffle(seeds)
        fallback = None
        for form in _weighted_order(_MULTI_FORMS, self.rng):
            for seed in seeds:
                for expr in self._candidates(form, seed, plural=True):
                    got = self.resolve(expr)
                    if got and len(got) >= 2:
                        if got not in avoid:
                            return expr
                        fallback = fallback or expr
        return fallback

    def _candidates(self, form: str, seed: int, *, plural: bool):
        """Expressions of ``form`` built around object ``seed`` (it need not be a referent)."""
        thing = self.things[seed]
        spatial = form in ("extreme", "half", "ordinal", "relation")
        for head in _subphrases(thing, self.rng, allow_empty=spatial):
            if form in ("the", "all", "plural"):
                yield Expression(form, head, plural=plural)
            elif form == "count":
                n = sum(head.matches(t) for t in self.things)
                if n in NUMBERS:
                    yield Expression("count", head, plural=True, number=n)
            elif form == "extreme":
                for d in self._directions():
                    yield Expression("extreme", head, direction=d)
            elif form == "half":
                for d in self._directions():
                    yield Expression("half", head, plural=plural, direction=d)
            elif form == "ordinal":
                for d in self._directions():
                    yield Expression("ordinal", head, number=self.rng.choice((2, 3)),
                                     direction=d)
            elif form == "relation":
                yield from self._relations(head, seed, plural)

    def _directions(self) -> list[str]:
        return self.rng.sample(DIRECTIONS, len(DIRECTIONS))

    def _relations(self, head: Phrase, seed: int, plural: bool):
        others = [i for i in range(len(self.things)) if i != seed]
        self.rng.shuffle(others)
        for anchor in others:
            landmark = self.unique_phrase(anchor)
            if landmark is None:
                continue
            for d in self._directions():
                if relation_holds(self.things[seed], self.things[anchor], d, self.side):
                    yield Expression("relation", head, plural=plural, direction=d,
                                     landmark=landmark)

    def unique_phrase(self, index: int) -> Phrase | None:
        """A phrase that names object ``index`` alone ("the blue square"), if one exists."""
        for phrase in _subphrases(self.things[index], self.rng, allow_empty=False):
            if self.resolve(Expression("the", phrase)) == {index}:
                return phrase
        return None

    # -- no target
    def no_target(self, near: int | None = None) -> Expression | None:
        """An expression that refers to nothing here, preferably a near miss of object
        ``near`` (or of any object)."""
        for kind in _weighted_order(_NONE_KINDS, self.rng):
            for expr in getattr(self, f"_miss_{kind}")(near):
                if self.resolve(expr) == frozenset():
                    return expr
        return None

    def _seeds(self, near: int | None) -> list[int]:
        if near is not None:
            return [near]
        seeds = list(range(len(self.things)))
        self.rng.shuffle(seeds)
        return seeds

    def _present(self, attr: str) -> set[str]:
        return {getattr(t, attr) for t in self.things}

    def _miss_attribute(self, near):
        """A real object with one attribute changed to another value seen in the scene
        ("the green star" with a green circle and a red star present)."""
        return self._described_elsewhere(near, lambda attr, own: self._present(attr) - {own})

    def _miss_absent(self, near):
        """A real object with its shape or colour changed to one the scene lacks."""
        return self._described_elsewhere(
            near, lambda attr, own: set(_VALUES[attr]) - self._present(attr))

    def _described_elsewhere(self, near, values):
        """Sentences for changed copies of real objects, worded by the positive sampler in
        the scene where the copies replace them: the same forms and wordings as sentences
        with a target (one object in two cases of three, else every object sharing the
        changed value), so that the wording alone does not give a no-target sentence away."""
        for seed in self._seeds(near):
            thing = self.things[seed]
            attrs = ["shape", "color", "size"]
            self.rng.shuffle(attrs)
            for attr in attrs:
                own = getattr(thing, attr)
                options = sorted(values(attr, own))
                self.rng.shuffle(options)
                for value in options:
                    many = self.rng.random() < 1 / 3
                    things = [replace(t, **{attr: value})
                              if i == seed or (many and getattr(t, attr) == own) else t
                              for i, t in enumerate(self.things)]
                    sampler = Sampler(things, self.side, self.rng)
                    expr = sampler.multi(avoid=set()) if many else sampler.single(seed)
                    if expr is not None:
                        yield expr

    def _miss_count(self, near):
        """More than there are: "the three red squares" with two red squares."""
        for seed in self._seeds(near):
            for head in _subphrases(self.things[seed], self.rng, allow_empty=False):
                n = sum(head.matches(t) for t in self.things)
                bigger = [k for k in NUMBERS if k > n]
                if bigger:
                    yield Expression("count", head, plural=True, number=min(bigger))

    def _miss_spatial(self, near):
        """A real kind of object at a place where there is none of it."""
        for seed in self._seeds(near):
            for head in _subphrases(self.things[seed], self.rng, allow_empty=False):
                for d in self._directions():
                    yield Expression("half", head, plural=self.rng.random() < 0.3, direction=d)
                yield Expression("ordinal", head, number=3, direction=self.rng.choice(DIRECTIONS))
                yield from self._relations_missing(head, seed)

    def _relations_missing(self, head: Phrase, seed: int):
        for anchor in range(len(self.things)):
            landmark = None if anchor == seed else self.unique_phrase(anchor)
            if landmark is not None:
                for d in self._directions():
                    yield Expression("relation", head, direction=d, landmark=landmark)

