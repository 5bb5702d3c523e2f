"""Decode stage: every mode becomes correct RGB; every bad file becomes a clear DecodeError."""

from __future__ import annotations

import io
import multiprocessing
import subprocess
import sys
from pathlib import Path

import billiard
import numpy as np
import pytest
from PIL import Image

from pipeline.backbones import DEFAULT_MODEL, get_spec
from pipeline.decode import DecodeError, DecodePool, decode_image

LIMIT = 50_000_000


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def test_rgba_is_composited_on_white() -> None:
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    im.putpixel((0, 0), (0, 0, 255, 255))
    out = decode_image(encode(im, "PNG"), max_pixels=LIMIT).image
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_la_and_palette_transparency() -> None:
    la = Image.new("LA", (4, 4), (0, 0))
    assert decode_image(encode(la, "PNG"), max_pixels=LIMIT).image.getpixel((1, 1)) == (255,) * 3
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.info["transparency"] = 0
    out = decode_image(encode(p, "PNG", transparency=0), max_pixels=LIMIT).image
    assert out.getpixel((0, 0)) == (10, 200, 30)


def test_cmyk_16bit_and_1bit() -> None:
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = decode_image(encode(cmyk, "JPEG", quality=95), max_pixels=LIMIT).image.getpixel(
        (1, 1)
    )
    assert r > 200 and g < 60 and b < 60
    grey16 = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    px = decode_image(encode(grey16, "PNG"), max_pixels=LIMIT).image.getpixel((0, 0))
    assert px[0] == px[1] == px[2] and 120 <= px[0] <= 135
    bw = Image.new("1", (4, 4), 1)
    assert decode_image(encode(bw, "PNG"), max_pixels=LIMIT).image.getpixel((0, 0)) == (255,) * 3


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95), max_pixels=LIMIT)
    assert (out.width, out.height) == (20, 40)
    assert out.image.size == (20, 40)
    top, bottom = out.image.getpixel((10, 5)), out.image.getpixel((10, 35))
    assert top[0] > 200 and bottom[0] < 50  # the white half is now on top


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(data, max_pixels=LIMIT)
    assert out.frames == 2
    r, g, _ = out.image.getpixel((2, 2))
    assert r > 200 and g < 50


def test_jpeg_draft_keeps_short_side_and_reports_original_size() -> None:
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8))
    out = decode_image(encode(im, "JPEG"), max_pixels=LIMIT, min_size=256)
    assert (out.width, out.height) == (1600, 1200)
    assert min(out.image.size) >= 256 and out.image.size[0] < 1600


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
        (encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:200], "(?i)truncated"),
    ],
)
def test_bad_files_raise_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, max_pixels=LIMIT)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(data, max_pixels=1_000_000)


def _decode_in_pool(path: Path, answers: multiprocessing.Queue) -> None:
    """Run in a daemonic process: decode ``path`` through a DecodePool, send back the shape
    (or what was raised)."""
    try:
        with DecodePool(workers=1, timeout_s=60) as pool:
            spec = get_spec(DEFAULT_MODEL)
            future = pool.submit(path, max_bytes=LIMIT, max_pixels=LIMIT, spec=spec)
            prepared = pool.result(future, path, LIMIT)
    except Exception as exc:
        answers.put((repr(exc), None))
        return
    answers.put((prepared.error, None if prepared.pixels is None else prepared.pixels.shape))


@pytest.mark.parametrize("starter", ["multiprocessing", "billiard"])
def test_the_decode_pool_starts_in_a_daemonic_process(tmp_path: Path, starter: str) -> None:
    """Airflow's Celery workers run tasks in forks of daemonic billiard pool processes, where
    plain multiprocessing refuses to start children, and billiard's authentication key cannot
    be pickled for a spawned child: every embedding task failed on the stack, for each reason
    in turn. "billiard" starts the daemon as Celery's prefork pool does."""
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (40, 30), (9, 90, 200)), "PNG"))
    if starter == "billiard":
        context = billiard.get_context("fork")
    else:
        context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    daemon = context.Process(target=_decode_in_pool, args=(path, answers), daemon=True)
    daemon.start()
    try:
        error, shape = answers.get(timeout=120)
    finally:
        daemon.join(timeout=30)
    assert error is None
    assert shape == (224, 224, 3)


MAIN_SCRIPT = """
import sys
from pathlib import Path

if __name__ != "__main__":  # run again as a worker's __mp_main__, as spawning does
    raise SystemExit("the main script was run again in a decode worker")
sys.path.insert(0, {repo!r})
from pipeline.backbones import DEFAULT_MODEL, get_spec
from pipeline.decode import DecodePool

path = Path(sys.argv[1])
with DecodePool(workers=1, timeout_s=60) as pool:
    future = pool.submit(path, max_bytes=10**8, max_pixels=10**8, spec=get_spec(DEFAULT_MODEL))
    prepared = pool.result(future, path, 10**8)
print(prepared.error, prepared.pixels.shape)
"""


def test_decode_workers_never_run_the_callers_main_script(tmp_path: Path) -> None:
    """Inside Airflow's Celery worker the main script is the ``airflow`` command: spawned
    workers ran it again, and it failed in each of them before a file was decoded."""
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (40, 30), (9, 90, 200)), "PNG"))
    script = tmp_path / "main.py"
    script.write_text(MAIN_SCRIPT.format(repo=str(Path(__file__).resolve().parents[1])))
    done = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "(224,", "224,", "3)"]
