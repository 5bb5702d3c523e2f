"""The real images the benchmark data sets are built from, found offline in installed packages.

* scikit-image and scikit-learn (project dependencies): about 20 photos, via
  :func:`pipeline.samples.load_photo`, plus the right view of the stereo motorcycle.
* Debian ``opencv-doc``: about 30 photos, with natural same-scene pairs (viewpoint change,
  illumination change, stereo views, an object and the scene it sits in, an edited copy).
* Debian ``plasma-workspace-wallpapers``: about 30 images. Most "resolutions" of a wallpaper are
  symlinks to one file in this package version (exact duplicates, useless as pairs); the real
  multi-crops are separate portrait/landscape renditions and dark variants, used as pairs.
* Debian ``tuxpaint-stamps-default``: about 465 real-photo cut-outs (RGBA) in 16 categories,
  for the category set and the near-duplicate distractors. Drawn stamps (cartoons, letters,
  shapes, musical notes...) and mirrored copies are left out.

A missing Debian package is not an error: its images are skipped and the reason is reported,
so the benchmarks run (with fewer images) on any machine with the Python dependencies.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

OPENCV_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
WALLPAPER_DIR = Path("/usr/share/wallpapers")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
FONT_DIR = Path("/usr/share/fonts")
ICON_DIR = Path("/usr/share/icons")
# The font packages the "fonts" family (benchmarks/families.py) is measured with; it renders
# every TrueType/OpenType font under FONT_DIR, so more fonts installed means more of them.
FONT_PACKAGES = {
    "fonts-dejavu-core": FONT_DIR / "truetype/dejavu",
    "fonts-freefont-ttf": FONT_DIR / "truetype/freefont",
    "fonts-liberation": FONT_DIR / "truetype/liberation",
    "fonts-noto-mono": FONT_DIR / "truetype/noto",
    "fonts-urw-base35": FONT_DIR / "opentype/urw-base35",
    "fonts-mathjax": FONT_DIR / "opentype/mathjax",
}
# The icon themes of the "icons" family: those Debian 12 ships with full-colour PNGs of 48 px
# and more (breeze, papirus, numix, elementary are SVG-only, suru has a few dozen PNGs; tango
# and gnome-colors stop at 32 px). Colour and dark variants (Yaru-blue, Faenza-Dark,
# elementary-xfce-dark...) are left out: they are the same drawings. moka-icon-theme pulls in
# faba-icon-theme, which is not read (Moka's own base theme).
ICON_THEMES = {
    "adwaita-icon-theme": ICON_DIR / "Adwaita",
    "gnome-icon-theme": ICON_DIR / "gnome",
    "mate-icon-theme": ICON_DIR / "mate",
    "moka-icon-theme": ICON_DIR / "Moka",
    "oxygen-icon-theme": ICON_DIR / "oxygen",
    "yaru-theme-icon": ICON_DIR / "Yaru",
    "elementary-xfce-icon-theme": ICON_DIR / "elementary-xfce",
    "faenza-icon-theme": ICON_DIR / "Faenza",
}
PACKAGE_DIRS = {
    "opencv-doc": OPENCV_DIR,
    "plasma-workspace-wallpapers": WALLPAPER_DIR,
    "tuxpaint-stamps-default": TUXPAINT_DIR,
    **FONT_PACKAGES,
    **ICON_THEMES,
}
"""The Debian packages a set can be built from, and where each one's images are."""

_SKIMAGE = [
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "page",
    "text",
    "cell",
]
_SKIMAGE_TEXTURES = ("brick", "grass", "gravel")  # whole-frame textures: backgrounds only
_SKLEARN = ("china", "flower")
_OPENCV = [
    "aero1",
    "aloeL",
    "apple",
    "baboon",
    "basketball1",
    "blox",
    "board",
    "box_in_scene",
    "building",
    "butterfly",
    "chicky_512",
    "ela_original",
    "fruits",
    "graf1",
    "home",
    "left",
    "leuvenA",
    "licenseplate_motion",
    "messi5",
    "notes",
    "orange",
    "pic6",
    "rubberwhale1",
    "smarties",
    "squirrel_cls",
    "starry_night",
    "stuff",
    "sudoku",
    "Blender_Suzanne1",
    "text_defocus",
]
# query file -> (the photo it shows, how the two differ)
_OPENCV_PAIRS = {
    "aero3": ("aero1", "viewpoint"),
    "graf3": ("graf1", "viewpoint"),
    "leuvenB": ("leuvenA", "illumination"),
    "aloeR": ("aloeL", "stereo"),
    "right": ("left", "stereo"),
    "basketball2": ("basketball1", "next video frame"),
    "rubberwhale2": ("rubberwhale1", "next video frame"),
    "Blender_Suzanne2": ("Blender_Suzanne1", "viewpoint"),
    "box": ("box_in_scene", "object in scene"),
    "ela_modified": ("ela_original", "edited copy"),
}
# Two of the 26 near-identical camera-calibration shots of one chessboard: backgrounds only
# (all 26 would make every third distractor the same chessboard).
_OPENCV_BACKGROUND = ["left01", "right07"]
# Drawn, not photographed: not what the category set is about.
_DRAWN_STAMP_DIRS = {"cartoon"}
_DRAWN_STAMP_PREFIXES = tuple(
    f"symbols/{d}/" for d in ("alphabets", "math", "shapes", "faces", "music", "chess")
)


class SourceUnavailable(RuntimeError):
    """A package that provides images is not installed; the message says which and where."""


@dataclass(frozen=True)
class Photo:
    """One real photo, loaded on demand as RGB (some are tens of megapixels)."""

    name: str
    source: str
    loader: Callable[[], Image.Image] = field(repr=False, compare=False)

    def load(self) -> Image.Image:
        image = self.loader()
        return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class NaturalPair:
    """A second, real view of ``target`` (not a synthetic edit): the hardest copies."""

    query: Photo
    target: str
    kind: str


@dataclass
class PhotoPool:
    """Distinct photos (references), their natural second views, and background-only photos."""

    photos: list[Photo]
    pairs: list[NaturalPair]
    backgrounds: list[Photo]
    skipped: dict[str, str]

    def split(self, seed: int, background_share: float) -> tuple[list[Photo], list[Photo]]:
        """References and background sources, disjoint: a distractor is built from photos no
        query shows, so "found the distractor" is always a miss, never a debatable match.
        Photos with a natural pair are always references."""
        paired = {p.target for p in self.pairs}
        singles = [p for p in self.photos if p.name not in paired]
        random.Random(seed).shuffle(singles)
        n_background = round(len(singles) * background_share)
        references = [p for p in self.photos if p.name in paired] + singles[n_background:]
        return sorted(references, key=lambda p: p.name), [
            *singles[:n_background],
            *self.backgrounds,
        ]


def photo_pool() -> PhotoPool:
    """Every real photo available on this machine (see the module docstring)."""
    photos: list[Photo] = []
    pairs: list[NaturalPair] = []
    backgrounds: list[Photo] = []
    skipped: dict[str, str] = {}
    photos += [Photo(f"skimage/{n}", "scikit-image", _library_loader(n)) for n in _SKIMAGE]
    photos += [Photo(f"sklearn/{n}", "scikit-learn", _library_loader(n)) for n in _SKLEARN]
    backgrounds += [
        Photo(f"skimage/{n}", "scikit-image", _library_loader(n)) for n in _SKIMAGE_TEXTURES
    ]
    pairs.append(
        NaturalPair(
            Photo("skimage/stereo_motorcycle_right", "scikit-image", _motorcycle_right),
            "skimage/stereo_motorcycle",
            "stereo",
        )
    )
    try:
        cv_photos, cv_pairs, cv_backgrounds = _opencv()
        photos += cv_photos
        pairs += cv_pairs
        backgrounds += cv_backgrounds
    except SourceUnavailable as exc:
        skipped["opencv-doc"] = str(exc)
    try:
        wp_photos, wp_pairs = _wallpapers()
        photos += wp_photos
        pairs += wp_pairs
    except SourceUnavailable as exc:
        skipped["plasma-workspace-wallpapers"] = str(exc)
    return PhotoPool(photos, pairs, backgrounds, skipped)


def _library_loader(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from pipeline.samples import load_photo

        return load_photo(name)

    return load


def _motorcycle_right() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.stereo_motorcycle()[1])


def _file_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as image:
            return image.convert("RGB")

    return load


def _require(path: Path, package: str) -> None:
    if not path.is_dir():
        raise SourceUnavailable(
            f"Debian package {package} is not installed ({path} is missing): its images are "
            f"skipped; `apt-get install {package}` adds them"
        )


def _opencv() -> tuple[list[Photo], list[NaturalPair], list[Photo]]:
    _require(OPENCV_DIR, "opencv-doc")
    files = {p.stem: p for p in OPENCV_DIR.iterdir() if p.suffix in (".jpg", ".png")}

    def photo(stem: str) -> Photo:
        return Photo(f"opencv/{stem}", "opencv-doc", _file_loader(files[stem]))

    photos = [photo(s) for s in _OPENCV if s in files]
    names = {p.name for p in photos}
    pairs = [
        NaturalPair(photo(q), f"opencv/{t}", kind)
        for q, (t, kind) in _OPENCV_PAIRS.items()
        if q in files and f"opencv/{t}" in names
    ]
    return photos, pairs, [photo(s) for s in _OPENCV_BACKGROUND if s in files]


def _wallpapers() -> tuple[list[Photo], list[NaturalPair]]:
    """One reference per wallpaper (its largest light image); its other real files (other
    aspect ratios, dark variants) are natural pairs. Symlinked sizes are the same file."""
    _require(WALLPAPER_DIR, "plasma-workspace-wallpapers")
    photos, pairs = [], []
    for folder in sorted(p for p in WALLPAPER_DIR.iterdir() if p.is_dir()):
        files: dict[Path, Path] = {}
        for path in sorted(folder.glob("contents/images*/*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png") and not path.is_symlink():
                files.setdefault(path.resolve(), path)
        light = [p for p in files.values() if p.parent.name == "images"]
        if not light:
            continue
        main = max(light, key=_pixels)
        name = f"wallpaper/{folder.name}"
        photos.append(Photo(name, "plasma-workspace-wallpapers", _file_loader(main)))
        for other in files.values():
            if other == main:
                continue
            kind = "dark variant" if other.parent.name.endswith("dark") else "other crop"
            query = Photo(
                f"{name}/{other.parent.name}/{other.stem}",
                "plasma-workspace-wallpapers",
                _file_loader(other),
            )
            pairs.append(NaturalPair(query, name, kind))
    return photos, pairs


def _pixels(path: Path) -> int:
    """Pixel count from a ``WIDTHxHEIGHT`` file name, the wallpaper packages' convention."""
    width, _, height = path.stem.partition("x")
    return int(width) * int(height) if width.isdigit() and height.isdigit() else 0


@dataclass(frozen=True)
class Stamp:
    """A Tux Paint cut-out: a real photo of one object on a transparent background."""

    path: Path
    category: str  # top-level folder, e.g. "animals" (16 of them)
    subcategory: str  # "animals/birds"; the category itself for stamps directly in it

    def load(self) -> Image.Image:
        with Image.open(self.path) as image:
            return image.convert("RGBA")


def tuxpaint_stamps() -> list[Stamp]:
    """The photographed stamps, sorted by path (raises :class:`SourceUnavailable`)."""
    _require(TUXPAINT_DIR, "tuxpaint-stamps-default")
    stamps = []
    for path in sorted(TUXPAINT_DIR.rglob("*.png")):
        rel = path.relative_to(TUXPAINT_DIR)
        parts = rel.parts
        if (
            _DRAWN_STAMP_DIRS & set(parts)
            or rel.as_posix().startswith(_DRAWN_STAMP_PREFIXES)
            or path.stem.endswith("_mirror")
        ):
            continue
        sub = f"{parts[0]}/{parts[1]}" if len(parts) > 2 else parts[0]
        stamps.append(Stamp(path, parts[0], sub))
    if not stamps:
        raise SourceUnavailable(f"no stamps found under {TUXPAINT_DIR}")
    return stamps
