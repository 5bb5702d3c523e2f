"""A generator of odd and hostile files, each kind with the outcome ingestion must give it.

``build_library(dest)`` writes one or more files per kind under ``dest`` and returns what each
file must end as: ``indexed``, or ``quarantined`` with a reason. Valid-but-odd images (CMYK,
16-bit, EXIF rotations, animations, strange names...) must be indexed; broken, dangerous and
unreadable ones quarantined with a reason that says why; none may crash, hang or blow up a run.
The tests (tests/test_hostile_library.py) run a real ingest over it.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageCms, features

# Limits the library is built for (the run must use them): small enough that a file just under
# the pixel limit decodes in a fraction of a second.
MAX_PIXELS = 16_000_000
MAX_FILE_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Expected:
    """What one file must end as."""

    kind: str
    path: Path
    outcome: Literal["indexed", "quarantined"]
    reason: str = ""  # a case-insensitive substring of the quarantine reason


def photo(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    """A small RGB picture with structure (gradients and blocks), so that every encoder has
    something to encode and every decoder something to get wrong."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x ^ y) & 0xFF], -1)
    arr[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 256, 3)
    return Image.fromarray(arr.astype(np.uint8))


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(width: int, height: int, idat: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG assembled by hand (any declared size, any IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def many_frames_gif(frames: int) -> bytes:
    """A 1x1 GIF with ``frames`` frames: tiny on disk, slow to walk through."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame * frames + b"\x3b"


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _animated(fmt: str) -> bytes:
    frames = [photo(seed=i) for i in range(3)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_transparent(fmt: str) -> bytes:
    im = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, fmt, transparency=0)


def _tiff_pages() -> bytes:
    return encode(photo(), "TIFF", save_all=True, append_images=[photo(seed=2)])


def _icc_jpeg() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(photo(), "JPEG", icc_profile=profile)


def _truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def _truncated_png() -> bytes:
    data = encode(photo((200, 200), seed=3), "PNG")
    idat = data.index(b"IDAT")
    return data[: idat + 200]  # signature and IHDR intact, IDAT cut short


def _bad_crc_png() -> bytes:
    data = bytearray(encode(photo(), "PNG"))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    return bytes(data)


def _png_text_bomb() -> bytes:
    """A zTXt chunk that inflates to 64 MB: Pillow must refuse it, not inflate it."""
    text = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 * 2**20), 9)
    data = encode(photo(), "PNG")
    return data[:33] + png_chunk(b"zTXt", text) + data[33:]


def _pixel_bomb() -> bytes:
    """20000x20000 pixels (400 Mpx) in a few hundred kilobytes."""
    row = b"\x00" + b"\x00" * 20000
    return png_of(20000, 20000, zlib.compress(row * 20000, 9))


def _header_only_huge() -> bytes:
    """Huge declared dimensions and almost no data: refused before decoding."""
    return png_of(60000, 60000, zlib.compress(b"\x00" * 100))


def _just_under_limit() -> bytes:
    side = int(MAX_PIXELS**0.5) - 1
    return encode(Image.new("RGB", (side, side), (30, 120, 200)), "PNG")


def _huge_gif_screen() -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b"\x3b"


def _polyglot() -> bytes:
    """A valid JPEG that is also an HTML page and a ZIP archive (data after the image)."""
    html = b"<html><script>alert(1)</script></html>"
    zip_tail = b"PK\x05\x06" + b"\x00" * 18
    return encode(photo(), "JPEG") + html + zip_tail


def _eps() -> bytes:
    """PostScript (Pillow would hand it to Ghostscript): never decoded."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def _cmyk_tiff() -> bytes:
    return encode(photo().convert("CMYK"), "TIFF")


def _grey16(fmt: str) -> bytes:
    arr = (np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) * 10 % 65536).astype(np.uint16)
    return encode(Image.fromarray(arr), fmt)


def _float_tiff() -> bytes:
    arr = np.linspace(-3.5, 7.25, 64 * 96, dtype=np.float32).reshape(64, 96)
    return encode(Image.fromarray(arr, mode="F"), "TIFF")


def _rgb48_png() -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow writes no such files)."""
    w, h = 8, 8
    raw = b"".join(
        b"\x00" + b"".join(struct.pack(">HHH", x * 8000, y * 8000, 30000) for x in range(w))
        for y in range(h)
    )
    return png_of(w, h, zlib.compress(raw), bit_depth=16, colour=2)


# name -> (outcome, reason, how to make the file's bytes, file name)
_FILES: list[tuple[str, str, str, Callable[[], bytes], str]] = [
    ("jpeg", "indexed", "", lambda: encode(photo(), "JPEG"), "plain.jpg"),
    ("jpeg progressive", "indexed", "", lambda: encode(photo(), "JPEG", progressive=True), "p.jpg"),
    ("jpeg greyscale", "indexed", "", lambda: encode(photo().convert("L"), "JPEG"), "grey.jpg"),
    ("jpeg cmyk", "indexed", "", lambda: encode(photo().convert("CMYK"), "JPEG"), "cmyk.jpg"),
    ("jpeg icc profile", "indexed", "", _icc_jpeg, "icc.jpg"),
    (
        "jpeg broken icc profile",
        "indexed",
        "",
        lambda: encode(photo(), "JPEG", icc_profile=b"not a profile" * 10),
        "bad_icc.jpg",
    ),
    *[
        (
            f"jpeg exif orientation {o}",
            "indexed",
            "",
            (lambda o=o: encode(photo(), "JPEG", exif=_exif(o))),
            f"exif_{o}.jpg",
        )
        for o in range(1, 9)
    ],
    (
        "jpeg corrupt exif",
        "indexed",
        "",
        lambda: encode(photo(), "JPEG", exif=b"Exif\x00\x00MM"),
        "badexif.jpg",
    ),
    ("png rgb", "indexed", "", lambda: encode(photo(), "PNG"), "rgb.png"),
    ("png rgba", "indexed", "", lambda: encode(photo().convert("RGBA"), "PNG"), "rgba.png"),
    ("png grey with alpha", "indexed", "", lambda: encode(photo().convert("LA"), "PNG"), "la.png"),
    ("png 16-bit grey", "indexed", "", lambda: _grey16("PNG"), "grey16.png"),
    ("png 16-bit rgb", "indexed", "", _rgb48_png, "rgb48.png"),
    ("png 1-bit", "indexed", "", lambda: encode(photo().convert("1"), "PNG"), "bw.png"),
    ("png palette transparency", "indexed", "", lambda: _palette_transparent("PNG"), "pal.png"),
    ("png animated (apng)", "indexed", "", lambda: _animated("PNG"), "anim.png"),
    ("png just under the pixel limit", "indexed", "", _just_under_limit, "big.png"),
    (
        "png with trailing garbage",
        "indexed",
        "",
        lambda: encode(photo(), "PNG") + b"\x00junk" * 50,
        "tail.png",
    ),
    ("gif palette transparency", "indexed", "", lambda: _palette_transparent("GIF"), "pal.gif"),
    ("gif animated", "indexed", "", lambda: _animated("GIF"), "anim.gif"),
    ("webp lossy", "indexed", "", lambda: encode(photo(), "WEBP", quality=80), "lossy.webp"),
    (
        "webp lossless alpha",
        "indexed",
        "",
        lambda: encode(photo().convert("RGBA"), "WEBP", lossless=True),
        "alpha.webp",
    ),
    ("webp animated", "indexed", "", lambda: _animated("WEBP"), "anim.webp"),
    ("tiff rgb", "indexed", "", lambda: encode(photo(), "TIFF"), "rgb.tif"),
    (
        "tiff lzw",
        "indexed",
        "",
        lambda: encode(photo(), "TIFF", compression="tiff_lzw"),
        "lzw.tiff",
    ),
    ("tiff cmyk", "indexed", "", _cmyk_tiff, "cmyk.tif"),
    ("tiff 16-bit grey", "indexed", "", lambda: _grey16("TIFF"), "grey16.tif"),
    ("tiff float", "indexed", "", _float_tiff, "float.tif"),
    ("tiff multi-page", "indexed", "", _tiff_pages, "pages.tif"),
    ("bmp 24-bit", "indexed", "", lambda: encode(photo(), "BMP"), "rgb.bmp"),
    ("bmp palette", "indexed", "", lambda: encode(photo().convert("P"), "BMP"), "pal.bmp"),
    ("ppm", "indexed", "", lambda: encode(photo(), "PPM"), "x.ppm"),
    ("pgm", "indexed", "", lambda: encode(photo().convert("L"), "PPM"), "x.pgm"),
    ("pbm", "indexed", "", lambda: encode(photo().convert("1"), "PPM"), "x.pbm"),
    ("tga", "indexed", "", lambda: encode(photo(), "TGA"), "x.tga"),
    ("ico", "indexed", "", lambda: encode(photo((64, 64)), "ICO"), "x.ico"),
    ("jpeg 2000", "indexed", "", lambda: encode(photo(), "JPEG2000"), "x.jp2"),
    ("wrong extension (png named .jpg)", "indexed", "", lambda: encode(photo(), "PNG"), "png.jpg"),
    ("upper-case extension", "indexed", "", lambda: encode(photo(), "JPEG"), "UPPER.JPG"),
    ("one pixel", "indexed", "", lambda: encode(Image.new("RGB", (1, 1), "red"), "PNG"), "dot.png"),
    (
        "extreme aspect ratio",
        "indexed",
        "",
        lambda: encode(Image.new("RGB", (4000, 2), "blue"), "PNG"),
        "banner.png",
    ),
    ("polyglot jpeg/html/zip", "indexed", "", _polyglot, "polyglot.jpg"),
    # -- files that must be quarantined, with the reason ------------------------------------
    ("zero bytes", "quarantined", "empty file", lambda: b"", "empty.jpg"),
    ("text with an image extension", "quarantined", "not an image", lambda: b"hello\n", "text.png"),
    (
        "html named .jpg",
        "quarantined",
        "not an image",
        lambda: b"<html><body>hi</body></html>",
        "page.jpg",
    ),
    ("random bytes", "quarantined", "", lambda: np.random.default_rng(7).bytes(5000), "noise.jpg"),
    ("postscript named .jpg", "quarantined", "not an image", _eps, "eps.jpg"),
    (
        "truncated jpeg",
        "quarantined",
        "truncated",
        lambda: _truncated(encode(photo((300, 200)), "JPEG")),
        "cut.jpg",
    ),
    ("truncated png", "quarantined", "truncated", _truncated_png, "cut.png"),
    ("truncated gif", "quarantined", "", lambda: _truncated(_animated("GIF"), 0.3), "cut.gif"),
    ("truncated webp", "quarantined", "", lambda: _truncated(encode(photo(), "WEBP")), "cut.webp"),
    (
        "truncated tiff",
        "quarantined",
        "",
        lambda: _truncated(encode(photo(), "TIFF"), 0.2),
        "cut.tif",
    ),
    ("png with a bad checksum", "quarantined", "", _bad_crc_png, "crc.png"),
    ("png text-chunk bomb", "quarantined", "", _png_text_bomb, "ztxt.png"),
    (
        "jpeg header only",
        "quarantined",
        "",
        lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        "header.jpg",
    ),
    ("decompression bomb", "quarantined", "decompression bomb", _pixel_bomb, "bomb.png"),
    (
        "huge dimensions, tiny data",
        "quarantined",
        "decompression bomb",
        _header_only_huge,
        "huge.png",
    ),
    ("gif with a huge screen and no frame", "quarantined", "", _huge_gif_screen, "screen.gif"),
]

if features.check("avif"):
    _FILES.append(("avif", "indexed", "", lambda: encode(photo(), "AVIF"), "x.avif"))


def build_library(dest: Path) -> list[Expected]:
    """Write every kind under ``dest`` (which must not exist yet); return each file's outcome.

    Kinds that need the operating system (FIFOs, sockets, links, permissions) are made with it;
    the unreadable ones only deny a process that file permissions apply to (see
    ``tests/support.py``: as root, ingestion must run without the capabilities that bypass
    them).
    """
    dest.mkdir(parents=True)
    expected: list[Expected] = []

    def add(kind: str, rel: str | bytes, outcome: str, reason: str = "") -> Path:
        path = dest / os.fsdecode(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        expected.append(Expected(kind, path, outcome, reason))  # type: ignore[arg-type]
        return path

    for kind, outcome, reason, make, name in _FILES:
        add(kind, f"formats/{name}", outcome, reason).write_bytes(make())

    good = encode(photo(seed=9), "JPEG")
    names = {
        "name with spaces": "names/a photo with spaces.jpg",
        "name with a newline": "names/two\nlines.jpg",
        "name that is not utf-8": b"names/latin1-\xe9t\xe9.jpg",
        "name with uri characters": "names/100% #1 ?q=a&b.jpg",
        "name with unicode": "names/写真 café 📷.jpg",
        "name starting with a dash": "names/-rf.jpg",
        "very long name": "names/" + "x" * 240 + ".jpg",
        "deeply nested": "deep/" + "/".join(f"d{i}" for i in range(30)) + "/photo.jpg",
    }
    for kind, rel in names.items():
        add(kind, rel, "indexed").write_bytes(good)

    outside = dest.parent / f"{dest.name}-outside"
    outside.mkdir()
    (outside / "target.jpg").write_bytes(encode(photo(seed=11), "JPEG"))
    add("symlink to a file outside the library", "links/outside.jpg", "indexed").symlink_to(
        outside / "target.jpg"
    )
    add("relative symlink inside the library", "links/inside.jpg", "indexed").symlink_to(
        "../formats/plain.jpg"
    )
    os.link(dest / "formats" / "rgb.png", add("hard link", "links/hard.png", "indexed"))
    add("symlink loop (a)", "links/loop_a.jpg", "quarantined", "loop").symlink_to("loop_b.jpg")
    add("symlink loop (b)", "links/loop_b.jpg", "quarantined", "loop").symlink_to("loop_a.jpg")
    add("symlink to itself", "links/self.jpg", "quarantined", "loop").symlink_to("self.jpg")
    add("dangling symlink", "links/dangling.jpg", "quarantined", "broken symbolic link").symlink_to(
        "no-such-file.jpg"
    )
    add("symlink to /dev/zero", "special/zero.png", "quarantined", "character device").symlink_to(
        "/dev/zero"
    )
    add("symlink to /dev/null", "special/null.jpg", "quarantined", "character device").symlink_to(
        "/dev/null"
    )
    os.mkfifo(add("fifo", "special/fifo.jpg", "quarantined", "fifo"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(add("unix socket", "special/socket.png", "quarantined", "socket")))
    sock.close()
    big = add("larger than the file limit", "special/too_big.jpg", "quarantined", "too large")
    with big.open("wb") as f:  # sparse: costs no disk
        f.write(good)
        f.truncate(MAX_FILE_BYTES + 1)

    unreadable = add("unreadable file", "private/no_read.jpg", "quarantined", "permission denied")
    unreadable.write_bytes(good)
    unreadable.chmod(0)
    locked = dest / "locked"
    locked.mkdir()
    (locked / "inside.jpg").write_bytes(good)
    locked.chmod(stat.S_IWUSR)  # neither listable nor searchable
    expected.append(Expected("unlistable folder", locked, "quarantined", "cannot list folder"))
    return expected
