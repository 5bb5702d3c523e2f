"""Region vectors: many embeddings of parts of an image from the one forward pass.

Why: a global embedding of the whole frame is dominated by its surroundings, so an object that
fills half a photo is hard to find from its own picture, and a photo is hard to find from a
scene it was pasted into. Pooling the backbone's last convolutional feature map over a fixed
multi-scale set of regions (R-MAC, Tolias, Sicre and Jégou, ICLR 2016) gives one vector per
region for almost nothing: the feature map is computed anyway, and a region's vector is an
average over its cells (pooled like the global vector, so the two are comparable).

The regions are the R-MAC grid on a square ``size x size`` map (7 x 7 for a 224-pixel input):
level ``l`` (2, 3, ...) has ``l x l`` square regions of side ``2 * size / (l + 1)`` cells,
spread evenly so neighbours overlap by about 40 %. Level 1 (the whole map) is the global vector
itself. Three levels (2-4) give 4 + 9 + 16 = 29 regions from half to two-fifths of the side.

A query is one image, so its regions can afford better than pooling: each region of the same
layout, in fractions of the whole image (:func:`layout`, not rounded to cells nor limited to
the model's centre crop), is cut out and embedded as an image of its own (``Embedder.cut_regions``:
29 forward passes, about half a second here). A cut-out region's vector sees none of its
surroundings, which a pooled one does through the receptive field: on the inset benchmark this
lifts "what in my library appears in this photo" from R@1 0.65 (pooled) to 0.91.

Boxes are ``(x, y, w, h)`` fractions: on the model input (the centre crop) from the grid, and on
the upright image after :func:`crop_window`, which is what documents store and the API returns.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

Box = tuple[float, float, float, float]
"""``(x, y, w, h)``, fractions 0..1 of an image's width and height."""


@lru_cache(maxsize=16)
def grid(size: int, levels: int) -> tuple[tuple[int, int, int], ...]:
    """The regions of a ``size x size`` map as ``(row, col, side)`` in cells; ``levels`` R-MAC
    levels after the whole map (0: none)."""
    regions = []
    for level in range(2, levels + 2):
        side = max(1, min(size, int(2 * size / (level + 1) + 0.5)))
        steps = [int(i * (size - side) / (level - 1) + 0.5) for i in range(level)]
        regions += [(row, col, side) for row in steps for col in steps]
    return tuple(dict.fromkeys(regions))  # a small map can repeat a region: keep it once


@lru_cache(maxsize=16)
def layout(levels: int) -> tuple[Box, ...]:
    """The same R-MAC levels as :func:`grid`, as exact fractions of an image: level ``l`` has
    ``l x l`` squares of side ``2 / (l + 1)`` spread evenly from edge to edge."""
    boxes: list[Box] = []
    for level in range(2, levels + 2):
        side = 2 / (level + 1)
        steps = [i * (1 - side) / (level - 1) for i in range(level)]
        boxes += [(x, y, side, side) for y in steps for x in steps]
    return tuple(boxes)


def pooling_matrix(size: int, levels: int) -> np.ndarray:
    """``(regions, size * size)`` float32: row ``r`` averages the cells of region ``r`` of a
    map flattened row-major, so ``matrix @ map`` is every region's average-pooled vector."""
    regions = grid(size, levels)
    matrix = np.zeros((len(regions), size * size), np.float32)
    for r, (row, col, side) in enumerate(regions):
        cells = np.zeros((size, size), np.float32)
        cells[row : row + side, col : col + side] = 1.0 / (side * side)
        matrix[r] = cells.ravel()
    return matrix


def crop_boxes(size: int, levels: int) -> np.ndarray:
    """``(regions, 4)`` float32 boxes of the regions on the model input, as fractions."""
    return np.array(
        [
            (col / size, row / size, side / size, side / size)
            for row, col, side in grid(size, levels)
        ],
        np.float32,
    ).reshape(-1, 4)


def crop_window(width: int, height: int, resize_size: int, image_size: int) -> Box:
    """The part of a ``width x height`` image the model sees: resized so its short side is
    ``resize_size``, then centre-cropped to ``image_size`` square (``embed.preprocess``)."""
    scale = resize_size / min(width, height)
    new_w, new_h = width * scale, height * scale
    return (
        (new_w - image_size) / 2 / new_w,
        (new_h - image_size) / 2 / new_h,
        image_size / new_w,
        image_size / new_h,
    )


def to_image(boxes: np.ndarray, window: Box) -> list[Box]:
    """Boxes on the model input as boxes on the image whose centre crop is ``window``."""
    x, y, w, h = window
    return [
        (round(x + bx * w, 4), round(y + by * h, 4), round(bw * w, 4), round(bh * h, 4))
        for bx, by, bw, bh in boxes.tolist()
    ]


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A fraction box as a PIL crop box ``(left, top, right, bottom)`` of at least one pixel."""
    x, y, w, h = box
    left, top = min(width - 1, int(x * width)), min(height - 1, int(y * height))
    right = max(left + 1, min(width, round((x + w) * width)))
    bottom = max(top + 1, min(height, round((y + h) * height)))
    return left, top, right, bottom
