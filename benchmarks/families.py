"""Labelled image families for training and evaluating a metric-learning embedding.

An identity here is a class: every image of one class shows the same thing, drawn by different
hands. Both families come from installed Debian packages (no download) and are identities that
ImageNet never labels, so a model that separates them has learnt "same design", not a class it
was pre-trained on.

* ``fonts``: one character rendered in many fonts is one identity (``U+0041_A``, ``U+03A9_...``).
  Every TrueType/OpenType file under ``/usr/share/fonts`` (fonts-dejavu-core, fonts-freefont-ttf,
  fonts-liberation, fonts-noto-mono, fonts-urw-base35, fonts-mathjax here) is a candidate; a font
  without the glyph (its rendering is the font's ``.notdef``, or blank) is skipped, and so are
  symbol fonts that put dingbats at Latin code points (D050000L, Standard Symbols PS). Fonts are
  picked one per family name first (the font's name table, via ``ImageFont.getname()``: DejaVu
  Sans Bold and DejaVu Sans Oblique are one family), the face within a family at random.
  Characters: Latin letters and digits, Greek and Cyrillic letters that look like no Latin one,
  and common symbols; letters that look the same as another class are left out (``l`` is
  ``I`` in a sans-serif font, Cyrillic Ze ``U+0417`` is ``3``...). Each glyph is dark on a
  light tint, sized per font so that a capital is 0.6 of the canvas (lower case stays smaller:
  ``o`` and ``O`` differ), with a little random scale, rotation and position.
* ``icons``: one icon name (``edit-copy``, ``folder``, ``media-playback-start``...) drawn by
  several icon themes is one identity. The themes are the Debian packages with full-colour PNGs
  of 48 px and more (:data:`benchmarks.sources.ICON_THEMES`: adwaita-icon-theme (installed with
  GTK), gnome-icon-theme, mate-icon-theme, moka-icon-theme, oxygen-icon-theme, yaru-theme-icon,
  elementary-xfce-icon-theme, faenza-icon-theme); SVG-only themes would need a rasteriser, which
  is not a dependency. Symbolic (monochrome) icons, animations and cursors are left out; each
  theme's PNG closest above the canvas size is used, composited on a light tint.

Within a class, byte-identical files (symlinks, one theme copying another) and near-identical
renderings (FreeSans is Nimbus Sans's outlines; GNOME, MATE and Adwaita share many drawings)
are kept once, so positives are seldom copies (a few recoloured GNOME/MATE pairs remain); an
icon file that several names share (an alias, a generic icon) belongs to one class only, and
names whose drawing is a theme's brand (``distributor-logo``) or a mirror (``*-rtl``) are left
out. A class needs ``min_fonts`` fonts / ``min_themes`` themes. Some classes are others
mirrored (``b``/``d``, ``go-next``/``go-previous``) or turned half way round (``d``/``p``,
``6``/``9``): train without flip or large-rotation augmentation.

Measured on the development machine (2 cores, Debian 12, the packages above), default
configuration, one process:

* fonts: all 147 candidate characters are classes, 1,746 images (11.9 per class, 4 to
  12), from 35 font families (111 usable faces of 113 files); built in 5 s. Symbols only a few
  families draw (black star, diamond suit) have 4.
* icons: 434 classes, 1,858 images (4.3 per class, 3 to 8) from 8 themes; built in 12 s
  (scanning the themes and hashing the candidates takes 2 s of it). 1,369 names are in three
  themes or more, but most are aliases of another name (``add`` is ``list-add``) or lose their
  copies to the GNOME/MATE/Adwaita dedupe.

Each family is a folder ``<root>/<family>/<class>/<NNN>.png`` (the layout ``lookalike train``
reads) plus ``manifest.json``, reused while the configuration hash matches (see
:mod:`benchmarks.datasets`). Same configuration and packages, same files.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks import sources
from benchmarks.common import console, track
from benchmarks.datasets import Manifest, _cached, _config_hash, _fresh, _write_manifest
from benchmarks.sources import SourceUnavailable

FAMILIES = ("fonts", "icons")
# Part of the cache key, next to datasets.BUILD_VERSION: bump it when the files change.
FAMILY_VERSION = 1


@dataclass(frozen=True)
class FamilyConfig:
    """How a family is built; every field is part of the cache key."""

    seed: int = 0
    max_per_class: int = 12  # fonts / themes per class, at most
    max_classes: int | None = None  # a seeded random subset of the classes (tiny test builds)
    size: int = 128  # square canvas, pixels
    min_fonts: int = 4  # a character drawn by fewer fonts is no class
    min_themes: int = 3  # an icon drawn by fewer themes is no class
    min_icon_px: int = 48  # smaller PNGs are not upscaled
    cap_height: float = 0.6  # a capital letter's height, of the canvas
    scale_jitter: float = 0.1  # glyph size x uniform(1 - j, 1 + j)
    rotation: float = 8.0  # degrees, either way
    shift: float = 0.06  # of the canvas, either way
    # When a second image of a class is the same image (then it is dropped):
    glyph_duplicate: float = 0.02  # mean |difference| of 32x32 glyph masks (0-1) below this
    # Icons: correlation of 16x16 grey and 32x32 alpha, both above this; between two themes of
    # one lineage (GNOME's, MATE's, Adwaita's: copies, recoloured), and between any two.
    icon_duplicate: float = 0.8
    icon_copy: float = 0.97


def build_family(root: Path, family: str, config: FamilyConfig) -> Manifest:
    """Build (or reuse) ``root/<family>/``: one folder per class, ``<class>/<NNN>.png``, and a
    manifest whose ``items["items"]`` rows are ``{"path", "label", "source"}`` (``source``: the
    font family or the icon theme). Missing packages are in ``manifest.skipped``; raises
    :class:`SourceUnavailable` when none of the family's packages is installed."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    folder = root / family
    digest = _config_hash(f"family/{family}/v{FAMILY_VERSION}", config)
    if (manifest := _cached(folder, digest)) is not None:
        return manifest
    start = time.perf_counter()
    build = _build_fonts if family == "fonts" else _build_icons
    rows, sources_used, skipped = build(folder, config)
    classes = {row["label"] for row in rows}
    console.print(
        f"{family} family: {len(classes)} classes, {len(rows)} images from "
        f"{len(sources_used)} sources in {time.perf_counter() - start:.1f} s"
        + (f" (skipped: {', '.join(sorted(skipped))})" if skipped else "")
    )
    manifest = Manifest(
        folder,
        {"family": family, **asdict(config)},
        {"items": rows, "sources": sources_used},
        skipped=skipped,
    )
    return _write_manifest(folder, digest, manifest)


# --- fonts ------------------------------------------------------------------------------------

# Latin letters and digits, without "l" (it is "I" in a sans-serif font).
_LATIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
# Greek and Cyrillic letters that look like no Latin letter, digit or each other: no Greek
# Alpha or Cyrillic Ve or o...; Cyrillic Ge, Pe, Ef are Greek Gamma, Pi, Phi; Cyrillic Ze is a
# 3, be a 6; Greek gamma is a y; Cyrillic lower case is mostly small capitals.
_GREEK = "ΓΔΘΛΞΠΣΦΨΩαβδεζηθλμξπσφψω"
_CYRILLIC = "БДЖИЛЦЧШЩЪЫЬЭЮЯд"
_SYMBOLS = "&@#$%?!§¶€£¥¢©®+=*÷∞√∫≈≠≤≥←→↑↓♠♣♥♦★ßæÆøØðþÞ¿‰"
CHARACTERS = _LATIN + _GREEK + _CYRILLIC + _SYMBOLS
"""The candidate classes of the fonts family (each needs ``min_fonts`` fonts with the glyph)."""

# Fonts whose Unicode table puts dingbats or Greek at Latin code points: an "A" that is a star.
_SYMBOL_FAMILIES = frozenset(
    {"D050000L", "Standard Symbols PS", "Dingbats", "Symbol", "OpenSymbol", "Webdings"}
)
# Code points no text font draws: what a font renders for them is its missing-glyph box.
_MISSING_PROBES = ("\U0010fffd", "\u0378", "\uffff")
_PROBE_SIZE = 64
_FONT_SUFFIXES = (".ttf", ".otf")


def class_name(char: str) -> str:
    """A file-system-safe class name for a character: ``U+0041_A``, ``U+03A9_greek-capital-...``."""
    code = ord(char)
    if char.isascii() and char.isalnum():
        return f"U+{code:04X}_{char}"
    name = unicodedata.name(char, "").lower()
    return f"U+{code:04X}_{re.sub(r'[^a-z0-9]+', '-', name).strip('-')}"


def _glyph(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    """The glyph's tight ``L`` mask (255 = ink), or None when it draws nothing."""
    x0, y0, x1, y1 = font.getbbox(char)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).text((-x0, -y0), char, font=font, fill=255)
    return mask if mask.getbbox() else None


def _signature(mask: Image.Image | None) -> tuple[tuple[int, int], bytes] | None:
    return None if mask is None else (mask.size, mask.tobytes())


class _Face:
    """One font file: its family and style names, which characters it has, its render size."""

    def __init__(self, path: Path, font: ImageFont.FreeTypeFont) -> None:
        self.path = path
        self.family, self.style = font.getname()
        self._probe = font
        self._missing = {_signature(_glyph(font, c)) for c in _MISSING_PROBES}
        self._has: dict[str, bool] = {}

    def has(self, char: str) -> bool:
        if char not in self._has:
            signature = _signature(_glyph(self._probe, char))
            self._has[char] = signature is not None and signature not in self._missing
        return self._has[char]

    def em(self, canvas: int, cap_height: float) -> float:
        """The font size at which a capital (an "H") is ``cap_height`` of the canvas."""
        target = cap_height * canvas
        if self.has("H"):
            _, top, _, bottom = self._probe.getbbox("H")
            return _PROBE_SIZE * target / max(1, bottom - top)
        ascent, _ = self._probe.getmetrics()
        return _PROBE_SIZE * target / max(1.0, 0.7 * ascent)

    def font(self, size: float) -> ImageFont.FreeTypeFont:
        return ImageFont.truetype(
            str(self.path), max(4, round(size)), layout_engine=ImageFont.Layout.BASIC
        )


def _walk(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under ``root`` with one of ``suffixes``, sorted, through symlinked folders (each
    real folder once)."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(suffixes):
                yield Path(folder) / name


def _font_faces() -> tuple[dict[str, list[_Face]], dict[str, str]]:
    """Every usable text font, grouped by family name; and the font packages not installed."""
    skipped = {
        package: f"Debian package {package} is not installed ({folder} is missing): its fonts "
        f"are skipped; `apt-get install {package}` adds them"
        for package, folder in sources.FONT_PACKAGES.items()
        if not folder.is_dir()
    }
    families: dict[str, list[_Face]] = defaultdict(list)
    seen: set[str] = set()
    root = sources.FONT_DIR
    for path in _walk(root, _FONT_SUFFIXES) if root.is_dir() else ():
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            font = ImageFont.truetype(str(path), _PROBE_SIZE, layout_engine=ImageFont.Layout.BASIC)
            face = _Face(path, font)
        except (OSError, ValueError):
            continue  # not a font FreeType reads
        if face.family in _SYMBOL_FAMILIES:
            continue
        if face.has("a") and _signature(_glyph(font, "a")) == _signature(_glyph(font, "\u03b1")):
            continue  # a symbol font by another name: Latin code points draw Greek
        families[face.family].append(face)
    if not families:
        raise SourceUnavailable(
            f"no TrueType/OpenType fonts under {root}: `apt-get install "
            f"{' '.join(sources.FONT_PACKAGES)}` adds them"
        )
    return dict(sorted(families.items())), skipped


def _thumbnail(image: Image.Image) -> np.ndarray:
    """32x32, 0-1: what the near-duplicate test compares."""
    small = image.convert("L").resize((32, 32), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _is_near_duplicate(thumb: np.ndarray, kept: list[np.ndarray], threshold: float) -> bool:
    return any(float(np.abs(thumb - other).mean()) < threshold for other in kept)


def _fitted_glyph(face: _Face, char: str, em: float, config: FamilyConfig) -> Image.Image | None:
    """The glyph's mask at size ``em``, shrunk where it would not fit 0.88 of the canvas."""
    mask = _glyph(face.font(em), char)
    limit = 0.88 * config.size
    if mask is not None and max(mask.size) > limit:
        mask = _glyph(face.font(em * limit / max(mask.size)), char)
    return mask


def _centred(mask: Image.Image, size: int) -> Image.Image:
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(mask, ((size - mask.width) // 2, (size - mask.height) // 2))
    return canvas


def _pick_faces(
    families: dict[str, list[_Face]], char: str, config: FamilyConfig, rng: random.Random
) -> list[tuple[_Face, float]]:
    """Up to ``max_per_class`` fonts that have ``char``, each with its render size: one face per
    family first (families in random order, a random face of each), then second faces...;
    near-duplicates of a face already picked are passed over."""
    usable = []
    for faces in families.values():
        faces = [f for f in faces if f.has(char)]
        rng.shuffle(faces)
        usable.append(faces)
    rng.shuffle(usable)
    rounds = range(max(map(len, usable), default=0))
    candidates = [faces[i] for i in rounds for faces in usable if i < len(faces)]
    picked: list[tuple[_Face, float]] = []
    kept: list[np.ndarray] = []
    for face in candidates:
        if len(picked) >= config.max_per_class:
            break
        em = face.em(config.size, config.cap_height)
        mask = _fitted_glyph(face, char, em, config)
        if mask is None:
            continue
        thumb = _thumbnail(_centred(mask, config.size))
        if _is_near_duplicate(thumb, kept, config.glyph_duplicate):
            continue
        kept.append(thumb)
        picked.append((face, em))
    return picked


def _light_background(rng: random.Random, size: int) -> Image.Image:
    base = rng.uniform(222, 250)
    tint = tuple(round(min(255.0, base + rng.uniform(-6, 6))) for _ in range(3))
    return Image.new("RGB", (size, size), tint)


def _render_glyph(
    face: _Face, em: float, char: str, config: FamilyConfig, rng: random.Random
) -> Image.Image:
    """Dark on a light tint, with a little random scale, rotation and shift."""
    scale = rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter)
    mask = _fitted_glyph(face, char, em * scale, config) or _fitted_glyph(face, char, em, config)
    assert mask is not None  # _pick_faces rendered it at size em
    mask = mask.rotate(
        rng.uniform(-config.rotation, config.rotation),
        resample=Image.Resampling.BICUBIC,
        expand=True,
    )
    canvas = _light_background(rng, config.size)
    ink_level = rng.uniform(0, 70)
    ink = tuple(round(max(0.0, ink_level + rng.uniform(-10, 10))) for _ in range(3))
    corner = _shifted(mask.size, config.size, config.shift, rng)
    canvas.paste(Image.new("RGB", mask.size, ink), corner, mask)
    return canvas


def _shifted(
    size: tuple[int, int], canvas: int, shift: float, rng: random.Random
) -> tuple[int, int]:
    """Top-left corner of a centred ``size`` box moved by up to ``shift`` of the ``canvas``,
    kept on the canvas where it fits."""
    corner = []
    for extent in size:
        free = canvas - extent
        x = free / 2 + rng.uniform(-shift, shift) * canvas
        corner.append(round(min(max(x, 0), free) if free >= 0 else free / 2))
    return corner[0], corner[1]


def _build_fonts(
    folder: Path, config: FamilyConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    families, skipped = _font_faces()
    order = list(CHARACTERS)
    random.Random(config.seed).shuffle(order)
    _fresh(folder)
    rows: list[dict[str, Any]] = []
    used: dict[str, int] = defaultdict(int)
    classes = 0
    for char in track(order, "fonts: characters"):
        if config.max_classes is not None and classes >= config.max_classes:
            break
        rng = random.Random(f"{config.seed}/fonts/{ord(char)}")
        picks = _pick_faces(families, char, config, rng)
        if len(picks) < config.min_fonts:
            continue
        classes += 1
        label = class_name(char)
        (folder / label).mkdir(parents=True)
        for i, (face, em) in enumerate(picks):
            path = f"{label}/{i:03d}.png"
            _render_glyph(face, em, char, config, rng).save(folder / path)
            rows.append(
                {
                    "path": path,
                    "label": label,
                    "source": face.family,
                    "style": face.style,
                    "char": char,
                    "file": str(face.path),
                }
            )
            used[face.family] += 1
    if not rows:
        raise SourceUnavailable(f"no character has {config.min_fonts} fonts with its glyph")
    rows.sort(key=lambda r: r["path"])
    sources_used = [{"source": name, "images": n} for name, n in sorted(used.items())]
    return rows, sources_used, skipped


# --- icons ------------------------------------------------------------------------------------

# "48x48", "48", "48x48@2x", "256x256": a folder that says the pixel size of the icons in it.
_SIZE_FOLDER = re.compile(r"^(\d+)(?:x\d+)?(?:@(\d+)x)?$")
# Sprite strips (process-working) and pointer images: not icons of a name.
_SKIP_FOLDERS = frozenset({"animations", "cursors"})
# Themes that share drawings: MATE forked GNOME 2's icons, Adwaita 43's full-colour ones are
# gnome-icon-theme 3's. Two of them often have the same drawing, recoloured or re-rendered.
_LINEAGES = {"Adwaita": "gnome", "gnome": "gnome", "mate": "gnome"}
# Names every theme fills with its own brand (Ubuntu's, Debian's, Xfce's logo): no identity.
_BRAND_NAMES = frozenset({"distributor-logo", "start-here"})
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class _Icon:
    theme: str
    package: str
    name: str
    path: Path
    digest: str
    real_stem: str  # the name of the file a symlink points to: whose drawing it is


def _pixel_size(parts: tuple[str, ...]) -> int:
    sizes = [
        int(m.group(1)) * int(m.group(2) or 1) for part in parts if (m := _SIZE_FOLDER.match(part))
    ]
    return max(sizes, default=0)


def _theme_candidates(theme_dir: Path, config: FamilyConfig) -> dict[str, list[Path]]:
    """Icon name -> its PNGs of at least ``min_icon_px``, best first: the smallest at least the
    canvas size, else the largest."""
    found: dict[str, list[tuple[tuple[int, int], str, Path]]] = defaultdict(list)
    for path in _walk(theme_dir, (".png",)):
        parts = path.relative_to(theme_dir).parts[:-1]
        name = path.name[: -len(".png")]
        if (
            "symbolic" in name
            or any("symbolic" in p for p in parts)
            or _SKIP_FOLDERS & set(parts)
            or name in _BRAND_NAMES
            or name.endswith("-rtl")  # the mirror image: edit-redo-rtl is edit-undo
        ):
            continue
        px = _pixel_size(parts)
        if px < config.min_icon_px:
            continue
        rank = (0, px) if px >= config.size else (1, -px)
        found[name].append((rank, str(path), path))
    return {name: [p for *_, p in sorted(paths)] for name, paths in sorted(found.items())}


def _usable_icon(path: Path, config: FamilyConfig) -> bool:
    """A real, square-ish raster of at least ``min_icon_px`` (the folder name can lie)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return min(width, height) >= config.min_icon_px and max(width, height) <= 1.25 * min(
        width, height
    )


def _load_icon(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGBA")


def _icon_features(icon: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean unit vectors of the icon's 16x16 grey (on mid grey) and its 32x32 alpha
    (zero for an opaque square). Measured on 31 hand-labelled pairs of the themes here: the
    same drawing in two themes (GNOME's, MATE's and Adwaita's copies, recoloured or
    re-rendered) correlates above 0.82 on both but for one; two themes' own drawings of a name
    below 0.75 on the grey, except plain ones that look alike anyway (a page of grey lines for
    ``text-x-generic``), which count as one image."""
    grey = Image.new("RGBA", icon.size, (128, 128, 128, 255))
    grey.alpha_composite(icon)
    small = np.asarray(grey.convert("L").resize((16, 16), Image.Resampling.BOX), np.float32)
    alpha = np.asarray(icon.getchannel("A").resize((32, 32), Image.Resampling.BOX), np.float32)
    return _unit(small.ravel()), _unit(alpha.ravel())


def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    norm = float(np.linalg.norm(x))
    return x / norm if norm > 1e-6 else np.zeros_like(x)


def _same_drawing(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], threshold: float
) -> bool:
    grey = float(a[0] @ b[0])
    opaque = not a[1].any() and not b[1].any()  # two opaque squares: the same outline
    alpha = 1.0 if opaque else float(a[1] @ b[1])
    return grey > threshold and alpha > threshold


def _render_icon(icon: Image.Image, config: FamilyConfig, rng: random.Random) -> Image.Image:
    """The icon at 0.78-0.9 of the canvas, on a light tint, a little off centre."""
    side = round(config.size * rng.uniform(0.78, 0.9))
    scale = side / max(icon.size)
    size = (max(1, round(icon.width * scale)), max(1, round(icon.height * scale)))
    icon = icon.resize(size, Image.Resampling.LANCZOS)
    canvas = _light_background(rng, config.size).convert("RGBA")
    canvas.alpha_composite(icon, _shifted(icon.size, config.size, 0.04, rng))
    return canvas.convert("RGB")


def _icon_names(
    config: FamilyConfig,
) -> tuple[dict[str, list[_Icon]], list[str], dict[str, str]]:
    """Name -> one icon per theme that has it (names in ``min_themes`` themes only), the themes
    found, and the packages not installed."""
    skipped: dict[str, str] = {}
    per_theme: dict[str, tuple[str, dict[str, list[Path]]]] = {}
    for package, theme_dir in sources.ICON_THEMES.items():
        if not theme_dir.is_dir():
            skipped[package] = (
                f"Debian package {package} is not installed ({theme_dir} is missing): its "
                f"icons are skipped; `apt-get install {package}` adds them"
            )
            continue
        per_theme[theme_dir.name] = (package, _theme_candidates(theme_dir, config))
    counts: dict[str, int] = defaultdict(int)
    for _, names in per_theme.values():
        for name in names:
            counts[name] += 1
    wanted = {name for name, n in counts.items() if n >= config.min_themes}
    icons: dict[str, list[_Icon]] = defaultdict(list)
    for theme, (package, names) in track(per_theme.items(), "icons: themes"):
        for name in sorted(wanted & names.keys()):
            path = next((p for p in names[name] if _usable_icon(p, config)), None)
            if path is None:
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            real_stem = Path(os.path.realpath(path)).name.removesuffix(".png")
            icons[name].append(_Icon(theme, package, name, path, digest, real_stem))
    return dict(sorted(icons.items())), list(per_theme), skipped


def _owners(icons: dict[str, list[_Icon]]) -> dict[str, str]:
    """File hash -> the one name it counts for. An icon file several names share (an alias,
    ``gtk-copy`` -> ``edit-copy``; a generic icon, ``application-x-java`` -> ``text-x-generic``)
    belongs to the name of a real file (not a symlink) with it, the one drawn by most themes
    (the generic name, not the special case), then the first in order."""
    names: dict[str, set[str]] = defaultdict(set)
    real: dict[str, set[str]] = defaultdict(set)
    for name, entries in icons.items():
        for icon in entries:
            names[icon.digest].add(name)
            real[icon.digest].add(icon.real_stem)
    return {
        digest: min(candidates, key=lambda n: (n not in real[digest], -len(icons[n]), n))
        for digest, candidates in names.items()
    }


def _build_icons(
    folder: Path, config: FamilyConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    icons, themes, skipped = _icon_names(config)
    if not themes:
        raise SourceUnavailable(
            "no icon theme is installed: `apt-get install "
            f"{' '.join(sources.ICON_THEMES)}` adds them"
        )
    owners = _owners(icons)
    order = [n for n, entries in icons.items() if len(entries) >= config.min_themes]
    random.Random(config.seed).shuffle(order)
    _fresh(folder)
    rows: list[dict[str, Any]] = []
    used: dict[str, int] = defaultdict(int)
    labels: set[str] = set()
    for name in track(order, "icons: classes"):
        if config.max_classes is not None and len(labels) >= config.max_classes:
            break
        label = _SAFE_NAME.sub("_", name)
        if label in labels:
            continue
        rng = random.Random(f"{config.seed}/icons/{name}")
        picked = _pick_icons([i for i in icons[name] if owners[i.digest] == name], config, rng)
        if len(picked) < config.min_themes:
            continue
        labels.add(label)
        (folder / label).mkdir(parents=True)
        for i, (icon, image) in enumerate(picked):
            path = f"{label}/{i:03d}.png"
            _render_icon(image, config, rng).save(folder / path)
            rows.append(
                {
                    "path": path,
                    "label": label,
                    "source": icon.theme,
                    "package": icon.package,
                    "name": icon.name,
                    "file": str(icon.path),
                }
            )
            used[icon.theme] += 1
    if not rows:
        raise SourceUnavailable(f"no icon name is drawn by {config.min_themes} installed themes")
    rows.sort(key=lambda r: r["path"])
    package_of = {d.name: p for p, d in sources.ICON_THEMES.items()}
    sources_used = [
        {"source": theme, "package": package_of.get(theme, ""), "images": used.get(theme, 0)}
        for theme in themes
    ]
    return rows, sources_used, skipped


def _pick_icons(
    entries: list[_Icon], config: FamilyConfig, rng: random.Random
) -> list[tuple[_Icon, Image.Image]]:
    """Up to ``max_per_class`` of a name's icons (one per theme, sorted by theme), without
    blank images, byte-identical files or near-duplicates (``icon_duplicate`` within a
    lineage, ``icon_copy`` across; themes in random order decide which of two stays)."""
    entries = sorted(entries, key=lambda i: i.theme)
    rng.shuffle(entries)
    picked: list[tuple[_Icon, Image.Image]] = []
    kept: list[tuple[str, tuple[np.ndarray, np.ndarray]]] = []
    digests: set[str] = set()
    for icon in entries:
        if len(picked) >= config.max_per_class:
            break
        if icon.digest in digests:
            continue
        digests.add(icon.digest)
        image = _load_icon(icon.path)
        if image.getchannel("A").getbbox() is None:
            continue
        features = _icon_features(image)
        lineage = _LINEAGES.get(icon.theme, icon.theme)
        if any(
            _same_drawing(
                features,
                other,
                config.icon_duplicate if lineage == other_lineage else config.icon_copy,
            )
            for other_lineage, other in kept
        ):
            continue
        kept.append((lineage, features))
        picked.append((icon, image))
    return sorted(picked, key=lambda p: p[0].theme)
