"""Seeded decode fuzzing: thousands of mutated PNG, GIF, JPEG, WebP, TIFF and BMP files go
through the reader stage exactly as ingestion runs it (decode workers, time limit, file checks).
Each must come back as model-ready pixels or as a quarantine reason; no exception may escape,
no file may stall the rest, and the process doing it must stay small.

The fuzzing runs in its own process, so its peak memory is measured on its own (``wait4``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from hostile import encode, photo
from PIL import Image
from support import run_measured

MUTATIONS_PER_FORMAT = 400
FORMATS = ("PNG", "GIF", "JPEG", "WEBP", "TIFF", "BMP")
SEED = 11
# A fresh Python with Pillow and numpy is ~100 MB; a worker decoding a mutated 48x32 image
# stays near that. A mutation that made a decoder allocate without bound would not.
PEAK_RSS_LIMIT = 600 * 2**20


def seeds() -> dict[str, bytes]:
    """One small, structured file per format (animated where the format has frames)."""
    frames = [photo((48, 32), seed=i) for i in range(3)]
    return {
        "PNG": encode(frames[0].convert("RGBA"), "PNG"),
        "GIF": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "JPEG": encode(frames[0], "JPEG", exif=Image.Exif().tobytes()),
        "WEBP": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "TIFF": encode(frames[0], "TIFF", compression="tiff_lzw"),
        "BMP": encode(frames[0].convert("P"), "BMP"),
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of the mutations that found crashes: bit flips, truncation, a chunk swapped,
    repeated or removed, a length field changed, random bytes inserted."""
    out = bytearray(data)
    n = len(out)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del out[rng.randrange(1, n) :]
    elif kind == 2:
        a, b = sorted(rng.sample(range(n), 2))
        size = rng.randint(1, max(1, min(64, b - a)))
        out[a : a + size], out[b : b + size] = out[b : b + size], out[a : a + size]
    elif kind == 3:
        a = rng.randrange(n)
        out[a:a] = out[a : a + rng.randint(1, 64)] * rng.randint(2, 20)
    elif kind == 4:
        a = rng.randrange(max(1, n - 4))
        out[a : a + 4] = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)]).to_bytes(
            4, "big"
        )
    else:
        a = rng.randrange(n)
        out[a:a] = rng.randbytes(rng.randint(1, 32))
    return bytes(out)


def write_corpus(folder: Path) -> int:
    rng = random.Random(SEED)
    count = 0
    for fmt, data in seeds().items():
        for i in range(MUTATIONS_PER_FORMAT):
            (folder / f"{fmt.lower()}_{i:04d}.{fmt.lower()}").write_bytes(mutate(data, rng))
            count += 1
    return count


DRIVER = """
import json, sys, time
from pathlib import Path
from pipeline.backbones import get_spec
from pipeline.discover import scan
from pipeline.ingest import AssetRef, plan_batches, read
from pipeline.settings import Settings

settings = Settings(decode_timeout_s=10)
assets = scan(Path(sys.argv[1]), max_file_bytes=settings.max_file_bytes)
spec = get_spec(settings.model)
batches = plan_batches([AssetRef(asset=a) for a in assets], 64)
started = time.perf_counter()
results = {}
for batch, _ in read(batches, spec, settings):
    for item in batch:
        pixels = item.file.pixels
        ok = pixels is not None and pixels.shape == (spec.image_size, spec.image_size, 3)
        results[item.asset.path.name] = "ok" if ok else (item.file.error or "no pixels, no reason")
print(json.dumps({"results": results, "seconds": time.perf_counter() - started}))
"""


def test_mutated_files_decode_or_quarantine_and_nothing_escapes(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    count = write_corpus(corpus)
    assert count >= 2000
    started = time.perf_counter()
    done = run_measured([sys.executable, "-c", DRIVER, str(corpus)], os.environ, timeout_s=300)
    assert done.code == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    assert len(results) == count, "every mutated file came back"
    failures = {name: r for name, r in results.items() if r != "ok"}
    assert all(failures.values()), "every failure has a reason"
    # Anything decode_image did not turn into a DecodeError, or that crashed a worker:
    escaped = [r for r in failures.values() if r.startswith(("cannot prepare", "the decoder"))]
    assert not escaped, escaped[:5]
    assert 0 < len(failures) < count, "the mutations hit both sides"
    assert done.peak_rss_bytes < PEAK_RSS_LIMIT, done.peak_rss_bytes
    print(
        f"{count} mutations in {time.perf_counter() - started:.1f} s, "
        f"{len(failures)} quarantined, peak {done.peak_rss_bytes / 2**20:.0f} MiB"
    )
