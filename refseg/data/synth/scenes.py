"""Procedural scenes: coloured shapes on a noisy background, with exact instance masks.

Every shape is a polygon, rasterised with pycocotools (the rasteriser every reader uses to
decode polygons), and the image is painted from those same masks: a stored polygon
decodes to exactly the pixels of its object. Objects are painted in order, so later ones
occlude earlier ones; an object's *visible* mask is what is left of it, and a placement
that would hide too much of any object is rejected (nothing is drawn that is not
annotated).

Legend: S image side in pixels; masks are (S, S) bool.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from refseg.data.masks import rle_to_mask, segmentation_to_rle

SHAPES = ("square", "circle", "triangle", "star", "hexagon", "diamond")
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (45, 85, 215),
    "yellow": (230, 205, 45),
    "purple": (140, 60, 180),
    "cyan": (40, 195, 205),
}
SIZES = ("small", "big")

# Radius as a fraction of the image side: the two sizes are a factor ~2 apart so that
# "small" and "big" stay obvious whatever the shape.
_RADIUS = {"small": (0.055, 0.075), "big": (0.11, 0.14)}
# Shape-specific scale so that shapes of one size cover similar areas.
_SCALE = {"square": 0.85, "circle": 1.0, "triangle": 1.2, "star": 1.25, "hexagon": 1.0,
          "diamond": 1.0}
MIN_VISIBLE = 0.6  # least visible fraction of any object after occlusion
_PLACEMENT_TRIES = 40
_NOISE_BACKGROUND = 9.0  # std of the per-pixel background noise (grey levels)
_NOISE_OBJECT = 6.0


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    Attributes:
        shape, color, size: its attributes (`SHAPES`, `COLORS`, `SIZES`).
        center: (x, y) of the shape's centre in pixels; positions in sentences use it.
        radius: circumradius-like extent in pixels.
        polygon: flat COCO polygon ``[x1, y1, x2, y2, ...]`` of the full (unoccluded) shape.
    """

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    radius: float
    polygon: tuple[float, ...]


@dataclass
class Scene:
    """A rendered scene. ``visible[i]`` is object i's mask after later objects are drawn."""

    side: int
    objects: list[SceneObject]
    full: list[np.ndarray]
    visible: list[np.ndarray]
    pixels: np.ndarray  # (S, S, 3) uint8

    def is_occluded(self, index: int) -> bool:
        return bool((self.full[index] != self.visible[index]).any())


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> tuple[float, ...]:
    """Vertices of a shape centred at (cx, cy), rotated by ``angle`` radians, as a flat list."""
    r = r * _SCALE[shape]
    if shape == "circle":
        points = _regular(32, r, 0.0)
    elif shape == "square":
        points = _regular(4, r, angle + math.pi / 4)
    elif shape == "triangle":
        points = _regular(3, r, angle - math.pi / 2)
    elif shape == "hexagon":
        points = _regular(6, r, angle)
    elif shape == "star":
        outer = _regular(5, r, angle - math.pi / 2)
        inner = _regular(5, 0.45 * r, angle - math.pi / 2 + math.pi / 5)
        points = [p for pair in zip(outer, inner) for p in pair]
    elif shape == "diamond":
        # A rhombus taller than wide, so it never reads as a rotated square.
        base = [(0.0, -1.1 * r), (0.7 * r, 0.0), (0.0, 1.1 * r), (-0.7 * r, 0.0)]
        c, s = math.cos(angle), math.sin(angle)
        points = [(x * c - y * s, x * s + y * c) for x, y in base]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return tuple(round(v, 2) for x, y in points for v in (cx + x, cy + y))


def _regular(n: int, r: float, phase: float) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def rasterize(polygon: tuple[float, ...], side: int) -> np.ndarray:
    """(S, S) bool mask of a polygon, exactly as pycocotools decodes it."""
    return rle_to_mask(segmentation_to_rle([list(polygon)], side, side))


def render_scene(rng: random.Random, noise: np.random.Generator, side: int,
                 n_objects: int) -> Scene:
    """Sample and paint a scene of up to ``n_objects`` objects (fewer if placement fails).

    A scene draws from a small palette of its own (3-5 colours, 3-5 shapes) so that
    attribute twins are common and sentences need counts, positions and relations.
    """
    colors = rng.sample(sorted(COLORS), rng.randint(3, 5))
    shapes = rng.sample(SHAPES, rng.randint(3, 5))
    objects: list[SceneObject] = []
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    for _ in range(n_objects):
        placed = _place(rng, side, rng.choice(shapes), rng.choice(colors),
                        rng.choice(SIZES), objects, full, visible)
        if placed is None:
            continue
        obj, mask, new_visible = placed
        objects.append(obj)
        visible = [*new_visible, mask.copy()]
        full.append(mask)
    pixels = _paint(noise, side, objects, full)
    return Scene(side=side, objects=objects, full=full, visible=visible, pixels=pixels)


def _place(rng, side, shape, color, size, placed_objects, full, visible):
    """Try positions until the new object leaves every earlier one enough visible area.

    Returns:
        (object, its (S, S) mask, earlier objects' new visible masks), or None.
    """
    lo, hi = _RADIUS[size]
    for _ in range(_PLACEMENT_TRIES):
        r = side * rng.uniform(lo, hi)
        margin = r * 1.3 + 1
        cx = rng.uniform(margin, side - margin)
        cy = rng.uniform(margin, side - margin)
        angle = 0.0 if shape == "circle" else math.radians(rng.uniform(-12, 12))
        if any(o.color == color and math.dist(o.center, (cx, cy)) < 1.3 * (o.radius + r) + 2
               for o in placed_objects):
            continue  # same-coloured objects must not touch: their border would vanish
        polygon = shape_polygon(shape, cx, cy, r, angle)
        mask = rasterize(polygon, side)
        new_visible = [v & ~mask for v in visible]
        if all(v.sum() >= MIN_VISIBLE * f.sum() for v, f in zip(new_visible, full)):
            obj = SceneObject(shape=shape, color=color, size=size,
                              center=(round(cx, 2), round(cy, 2)), radius=round(r, 2),
                              polygon=polygon)
            return obj, mask, new_visible
    return None


def _paint(noise: np.random.Generator, side: int, objects, masks) -> np.ndarray:
    """Noisy tinted background with a gentle gradient; objects painted in order."""
    base = noise.uniform(95, 165) + noise.uniform(-12, 12, size=3)
    ramp = np.linspace(-1.0, 1.0, side)
    gx, gy = noise.uniform(-15, 15, size=2)
    gradient = gx * ramp[None, :, None] + gy * ramp[:, None, None]
    img = base + gradient + noise.normal(0.0, _NOISE_BACKGROUND, size=(side, side, 3))
    for obj, mask in zip(objects, masks):
        shade = np.asarray(COLORS[obj.color], dtype=np.float64) + noise.uniform(-15, 15)
        count = int(mask.sum())
        img[mask] = shade + noise.normal(0.0, _NOISE_OBJECT, size=(count, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
