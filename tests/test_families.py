"""The labelled image families (benchmarks/families.py) on tiny configurations: the folder tree
``lookalike train`` reads, labels that match it, the cache, the class split, and the rules that
keep an identity clean (missing glyphs, symbol fonts, symbolic icons, aliases, copies)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from benchmarks import families, sources
from benchmarks.families import FamilyConfig, build_family, class_name
from benchmarks.sources import SourceUnavailable

DEJAVU = sources.FONT_PACKAGES["fonts-dejavu-core"]
needs_dejavu = pytest.mark.skipif(
    not (DEJAVU / "DejaVuSans.ttf").is_file(),
    reason="Debian package fonts-dejavu-core is not installed (apt-get install fonts-dejavu-core)",
)
_INSTALLED_THEMES = [p for p, d in sources.ICON_THEMES.items() if d.is_dir()]
needs_icon_themes = pytest.mark.skipif(
    len(_INSTALLED_THEMES) < 3,
    reason="fewer than 3 icon themes installed: apt-get install "
    + " ".join(p for p in sources.ICON_THEMES if p not in _INSTALLED_THEMES),
)
TINY_FONTS = FamilyConfig(max_classes=4, max_per_class=4, min_fonts=2)


def check_tree(manifest, family: str, min_per_class: int = 2) -> Counter[str]:
    """The manifest and the folders agree; returns images per class."""
    root = manifest.root
    assert root.name == family
    rows = manifest.items["items"]
    counts = Counter(row["label"] for row in rows)
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders == set(counts)
    assert {p.name for p in root.iterdir() if p.is_file()} == {"manifest.json"}
    on_disk = {p.relative_to(root).as_posix() for p in root.glob("*/*")}
    assert on_disk == {row["path"] for row in rows}
    for row in rows:
        label, _, file = row["path"].partition("/")
        assert label == row["label"] and file.endswith(".png") and row["source"]
        assert all(c.isalnum() or c in "._+-" for c in label), label
        with Image.open(root / row["path"]) as image:
            assert image.size == (128, 128) and image.mode == "RGB"
    assert min(counts.values()) >= min_per_class
    return counts


@needs_dejavu
def test_fonts_family_builds_a_labelled_tree(tmp_path: Path) -> None:
    manifest = build_family(tmp_path, "fonts", TINY_FONTS)
    counts = check_tree(manifest, "fonts")
    assert len(counts) == 4 and max(counts.values()) <= 4
    assert manifest.config["family"] == "fonts"
    chars = {row["label"]: row["char"] for row in manifest.items["items"]}
    assert all(class_name(char) == label for label, char in chars.items())
    # A glyph is dark on light: not a blank canvas, not a filled box.
    with Image.open(manifest.paths("items")[0]) as image:
        grey = image.convert("L")
        low, high = grey.getextrema()
        ink = sum(grey.histogram()[:128]) / (128 * 128)
    assert high - low > 100 and 0.01 < ink < 0.5


@needs_dejavu
def test_fonts_family_is_deterministic_and_cached(tmp_path: Path) -> None:
    first = build_family(tmp_path / "a", "fonts", TINY_FONTS)
    again = build_family(tmp_path / "b", "fonts", TINY_FONTS)
    assert first.items["items"] == again.items["items"]
    for row in first.items["items"]:
        path = row["path"]
        assert (first.root / path).read_bytes() == (again.root / path).read_bytes()
    manifest_file = first.root / "manifest.json"
    image = first.paths("items")[0]
    stamps = manifest_file.stat().st_mtime_ns, image.stat().st_mtime_ns
    reused = build_family(tmp_path / "a", "fonts", TINY_FONTS)
    assert reused.items == first.items
    assert (manifest_file.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps
    other = build_family(tmp_path / "a", "fonts", replace(TINY_FONTS, seed=1))
    assert other.config["seed"] == 1 and manifest_file.stat().st_mtime_ns != stamps[0]


@needs_dejavu
def test_missing_glyphs_and_symbol_fonts_are_left_out() -> None:
    path = DEJAVU / "DejaVuSans.ttf"
    face = families._Face(path, ImageFont.truetype(str(path), 64))
    assert face.family == "DejaVu Sans"
    assert face.has("A") and face.has("\u0416") and face.has("\u03a9")
    assert not face.has("\u4e00")  # no CJK in DejaVu: its .notdef box
    assert not face.has(" ")  # blank
    faces, _ = families._font_faces()
    assert "DejaVu Sans" in faces
    assert not {"D050000L", "Standard Symbols PS"} & faces.keys()  # dingbats at Latin codes


def test_missing_fonts_raise_with_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sources, "FONT_DIR", tmp_path / "absent")
    with pytest.raises(SourceUnavailable, match="apt-get install fonts-dejavu-core"):
        build_family(tmp_path, "fonts", TINY_FONTS)
    with pytest.raises(ValueError, match="unknown family"):
        build_family(tmp_path, "glyphs", TINY_FONTS)


def _shape(kind: str, colour: str, size: int = 64) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    s = size
    if kind == "disc":  # top left
        draw.ellipse((2, 2, s // 2, s // 2), fill=colour)
    elif kind == "bar":  # bottom, wide
        draw.rectangle((4, s * 3 // 4, s - 4, s - 4), fill=colour)
    elif kind == "wedge":  # right
        draw.polygon([(s - 2, 2), (s - 2, s - 2), (s // 2, s // 2)], fill=colour)
    elif kind == "ring":
        draw.ellipse((8, 8, s - 8, s - 8), outline=colour, width=6)
    return image


def _fake_themes(root: Path) -> dict[str, Path]:
    """Three small themes: ``alpha`` drawn three ways, ``beta`` twice (one theme copies
    another's file), ``gamma`` an alias of ``alpha`` in one theme, ``zeta`` one drawing
    re-coloured, and names that are never classes (symbolic, 32 px, a distribution logo)."""
    shapes = {"t1": "disc", "t2": "bar", "t3": "wedge"}
    for theme, shape in shapes.items():
        big = root / theme / "256x256" / "actions"
        small = root / theme / "32x32" / "actions"
        big.mkdir(parents=True)
        small.mkdir(parents=True)
        _shape(shape, "#c03020", 256).save(big / "alpha.png")
        _shape(shape, "#2050c0", 256).save(big / "delta-symbolic.png")
        _shape(shape, "#2050c0", 256).save(big / "distributor-logo.png")
        _shape(shape, "#20a040", 32).save(small / "eps.png")
        (root / theme / "48x48" / "actions").mkdir(parents=True)
        _shape("ring", f"#{10 + 20 * int(theme[1]):02x}8020").save(
            root / theme / "48x48" / "actions" / "zeta.png"
        )
    for theme, shape in (("t1", "bar"), ("t2", "disc")):
        _shape(shape, "#e0a000", 256).save(root / theme / "256x256" / "actions" / "beta.png")
    (root / "t3" / "256x256" / "actions" / "beta.png").write_bytes(
        (root / "t2" / "256x256" / "actions" / "beta.png").read_bytes()
    )
    _shape("ring", "#806000", 256).save(root / "t1" / "256x256" / "actions" / "gamma.png")
    os.symlink("alpha.png", root / "t2" / "256x256" / "actions" / "gamma.png")
    return {
        "t1-icon-theme": root / "t1",
        "t2-icon-theme": root / "t2",
        "t3-icon-theme": root / "t3",
        "absent-icon-theme": root / "absent",
    }


def test_icons_family_rules_on_fake_themes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sources, "ICON_THEMES", _fake_themes(tmp_path / "icons"))
    config = FamilyConfig(min_themes=2)
    manifest = build_family(tmp_path / "out", "icons", config)
    counts = check_tree(manifest, "icons")
    # gamma: t2's is alpha's file, so gamma is left with t1's alone; zeta is one drawing.
    assert counts == {"alpha": 3, "beta": 2}
    assert {r["source"] for r in manifest.items["items"] if r["label"] == "alpha"} == {
        "t1",
        "t2",
        "t3",
    }
    assert "apt-get install absent-icon-theme" in manifest.skipped["absent-icon-theme"]
    monkeypatch.setattr(sources, "ICON_THEMES", {"absent-icon-theme": tmp_path / "absent"})
    with pytest.raises(SourceUnavailable, match="absent-icon-theme"):
        build_family(tmp_path / "none", "icons", config)


@needs_icon_themes
def test_icons_family_builds_from_installed_themes(tmp_path: Path) -> None:
    config = FamilyConfig(max_classes=3, max_per_class=4)
    manifest = build_family(tmp_path, "icons", config)
    counts = check_tree(manifest, "icons", min_per_class=3)
    assert len(counts) == 3 and max(counts.values()) <= 4
    for label in counts:
        themes = [r["source"] for r in manifest.items["items"] if r["label"] == label]
        assert len(themes) == len(set(themes))  # one image per theme
    assert not any("symbolic" in r["file"] for r in manifest.items["items"])
    stamp = (manifest.root / "manifest.json").stat().st_mtime_ns
    assert build_family(tmp_path, "icons", config).items == manifest.items
    assert (manifest.root / "manifest.json").stat().st_mtime_ns == stamp
