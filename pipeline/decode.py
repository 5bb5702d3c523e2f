"""Decode stage: turn untrusted files into RGB images, or a clear reason why not.

Media libraries contain everything: CMYK scans, 16-bit TIFFs, palette GIFs with transparency,
phone photos that rely on EXIF orientation, truncated uploads, files that are not images at all,
and things that are not files: FIFOs, devices, sockets, symbolic-link loops. Every one of them
must either become a correct RGB image or a ``DecodeError`` whose message is fit for a
quarantine report; nothing here may crash, hang or exhaust a batch:

* a path is checked before it is opened (:func:`file_problem`) and opened without blocking or
  following it into a device (:func:`read_file`), and no more than the size limit is read;
* decoding is total: whatever Pillow or one of its plugins raises becomes a ``DecodeError``
  naming the exception, and only the formats Lookalike indexes are tried (no Ghostscript for an
  EPS file named ``.jpg``);
* :class:`DecodePool` decodes in worker processes with a time limit, so a file that takes too
  long (or crashes a decoder) is quarantined and its worker replaced while the run goes on.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.machinery
import io
import multiprocessing
import os
import stat
import sys
import warnings
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pebble import ProcessExpired, ProcessPool
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pipeline.backbones import ModelSpec
from pipeline.embed import preprocess

_WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_SRGB = ImageCms.createProfile("sRGB")

# The Pillow formats of the file types Lookalike indexes (pipeline.discover.IMAGE_EXTENSIONS),
# whatever a file's extension says. Everything else is refused before a plugin sees it.
DECODABLE_FORMATS = (
    "JPEG",
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "PPM",
    "TGA",
    "ICO",
    "JPEG2000",
    "AVIF",
)

# Pillow allocates large images in blocks of this size. glibc returns freed allocations of
# 32 MiB and more to the system at once (they are mmapped), while smaller ones stay in the
# allocating thread's heap: with Pillow's default 16 MiB blocks, a server thread that decoded one
# 88-megapixel PNG kept ~350 MB after the request. A user's PILLOW_BLOCK_SIZE still wins.
_PILLOW_BLOCK_BYTES = 64 * 2**20
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(max(Image.core.get_block_size(), _PILLOW_BLOCK_BYTES))

_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


class DecodeError(ValueError):
    """The bytes cannot be indexed; the message is the quarantine reason."""


class UnreadableFile(DecodeError):
    """The file cannot be read (not its content: it was never read). Such a quarantine entry
    carries no content hash and is retried as soon as a scan no longer finds the problem."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus the facts about the original worth storing."""

    image: Image.Image
    width: int
    height: int
    format: str
    frames: int = 1


@dataclass(frozen=True)
class PreparedFile:
    """What a decode worker sends back for one file: its content hash and model-ready pixels,
    or why it has none. ``sha256`` is empty when the file could not be read at all."""

    sha256: str = ""
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    error: str | None = None
    unchanged: bool = False  # the content hash was the expected one: nothing decoded


def file_problem(path: Path, max_bytes: int) -> str | None:
    """Why ``path`` cannot be indexed, found without opening it, or ``None`` if it is a readable
    regular file (directly or through symbolic links) of at most ``max_bytes``."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _os_error_reason(exc, path)
    if reason := _mode_problem(st, max_bytes):
        return reason
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``, or ``UnreadableFile`` with the reason.

    Checked before opening (a FIFO would block the reader, a device like /dev/zero would never
    end) and again on the open descriptor (the path may have been replaced in between); opened
    non-blocking and never read past ``max_bytes``, so a file that grows meanwhile is refused
    rather than read without end.
    """
    if reason := file_problem(path, max_bytes):
        raise UnreadableFile(reason)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadableFile(_os_error_reason(exc, path)) from None
    try:
        if reason := _mode_problem(os.fstat(fd), max_bytes):
            raise UnreadableFile(reason)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise UnreadableFile(_os_error_reason(exc, path)) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnreadableFile(_too_large(len(data), max_bytes, grew=True))
    return data


def _mode_problem(st: os.stat_result, max_bytes: int) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        return f"not a regular file: {kind}"
    if st.st_size > max_bytes:
        return _too_large(st.st_size, max_bytes)
    return None


def _too_large(size: int, max_bytes: int, grew: bool = False) -> str:
    how = "grew past" if grew else f"{size} bytes, over"
    return f"file too large: {how} the limit of {max_bytes} bytes (LOOKALIKE_MAX_FILE_BYTES)"


def _os_error_reason(exc: OSError, path: Path) -> str:
    """A quarantine reason for a failed stat or open, without the path (the record names it)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        return (
            "broken symbolic link: its target does not exist"
            if path.is_symlink()
            else ("file not found")
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot read: {exc.strerror or type(exc).__name__}"


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    min_size: int | None = None,
) -> DecodedImage:
    """Decode ``data`` into an upright RGB image, or raise ``DecodeError`` with the reason.

    ``max_pixels`` guards against decompression bombs *before* any pixel is decoded.
    ``min_size`` enables JPEG draft decoding: the DCT is scaled down (1/2, 1/4, 1/8) as long as
    both sides stay >= ``min_size``, which is several times faster for large photos and loses
    nothing when the model only needs e.g. a 256-pixel short side.

    Total: any exception of Pillow or a plugin (fuzzing found ``IndexError``, ``OSError``,
    ``struct.error``, ``SyntaxError``, ``ValueError``...) becomes a ``DecodeError`` that names
    it, so one hostile file can never stop a batch.
    """
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns at its own pixel limit (ours below gives the real answer) and about
            # corrupt metadata it skips; neither is worth a line on a user's terminal.
            warnings.simplefilter("ignore")
            return _decode(data, max_pixels, min_size)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb guard: {exc}") from None
    except Exception as exc:  # decoding is total: see the docstring
        raise DecodeError(f"corrupt image data: {type(exc).__name__}: {exc}") from None


def _decode(data: bytes, max_pixels: int, min_size: int | None) -> DecodedImage:
    im = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(
            f"decompression bomb guard: {width}x{height} = {width * height} pixels "
            f"exceeds the limit of {max_pixels}"
        )
    fmt = im.format or "unknown"
    frames = getattr(im, "n_frames", 1)
    if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # 90/270-degree turns
        width, height = height, width
    if min_size and fmt == "JPEG":
        im.draft("RGB", (min_size, min_size))
    im.load()  # animated images: Image.open leaves the first frame selected
    rgb = to_rgb(ImageOps.exif_transpose(im))
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, frames=frames)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit sRGB, compositing transparency onto white."""
    icc = im.info.get("icc_profile")
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = Image.fromarray(_to_uint8(np.asarray(im)), mode="L")
        mode = "L"
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (*_WHITE, 255))
        im = Image.alpha_composite(background, im)
    if icc and im.mode in ("RGB", "RGBA", "CMYK"):
        im = _icc_to_srgb(im, icc)
    return im if im.mode == "RGB" else im.convert("RGB")


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Colour-manage with the embedded profile (Adobe RGB, CMYK press profiles...).

    A broken profile is not worth quarantining the image for: fall back to Pillow's plain
    conversion, which is what most viewers show anyway.
    """
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(
            im.convert("RGB") if im.mode == "RGBA" else im, src, _SRGB, outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale high-bit-depth grey to 8 bits: 16-bit by its full range, floats by min/max."""
    if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0:
        if arr.max() <= 255:
            return arr.astype(np.uint8)
        if arr.dtype == np.uint16 or arr.max() <= 65535:
            return (arr.astype(np.uint32) // 257).astype(np.uint8)
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if not finite.size:
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    scaled = (np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


# -- decoding files in worker processes -------------------------------------------------------


def prepare_file(
    path: Path,
    *,
    max_bytes: int,
    max_pixels: int,
    spec: ModelSpec,
    expected_sha256: str | None = None,
) -> PreparedFile:
    """Read, hash, decode and preprocess one file for ``spec``'s model; never raises.

    A file whose hash is ``expected_sha256`` (the content the store already holds) is not
    decoded again: ``unchanged`` says so.
    """
    try:
        data = read_file(path, max_bytes)
    except UnreadableFile as exc:
        return PreparedFile(error=str(exc))
    sha = hashlib.sha256(data).hexdigest()
    if sha == expected_sha256:
        return PreparedFile(sha256=sha, unchanged=True)
    try:
        decoded = decode_image(data, max_pixels=max_pixels, min_size=spec.resize_size)
        pixels = preprocess(decoded.image, spec)
    except DecodeError as exc:
        return PreparedFile(sha256=sha, error=str(exc))
    except Exception as exc:  # preprocessing an odd image must not stop the batch either
        return PreparedFile(sha256=sha, error=f"cannot prepare image: {type(exc).__name__}: {exc}")
    return PreparedFile(
        sha256=sha,
        pixels=pixels,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
    )


def _warm_worker() -> None:
    """Load Pillow's plugins before the first task, so the time limit measures decoding."""
    Image.init()


def _allow_children() -> None:
    """Let this process start the decode workers wherever it runs, Airflow's Celery worker
    included, where three things stop multiprocessing from starting them.

    * Celery runs each task in a fork of a billiard pool process, which is daemonic, and
      multiprocessing refuses to start children from a daemonic process ("daemonic processes
      are not allowed to have children"). The rule guards against orphans, which the decode
      workers cannot become: this process stops them when its batches end, and each one exits
      when the pipe to this process closes, as it does when this process dies.
    * Billiard installs its own process object as multiprocessing's current process, whose
      authentication key is billiard's type: starting a child pickles the key for it, and only
      multiprocessing's own type may be pickled then ("Pickling an AuthenticationString object
      is disallowed").
    * A spawned child first runs the parent's main script again (as ``__mp_main__``) unless
      the main module names itself; inside Celery that is the ``airflow`` command, which
      fails in a task's environment (Airflow blanks the database URL there), and for the
      ``lookalike`` command it costs every worker the whole CLI's imports. The workers need
      nothing from it, so a main module without a name gets the name ``__main__``, which
      multiprocessing skips.
    """
    process = multiprocessing.current_process()
    config = process._config  # the public setters refuse a process once started
    if process.daemon:
        config["daemon"] = False
    authkey = config.get("authkey")
    if authkey is not None and type(authkey) is not multiprocessing.process.AuthenticationString:
        config["authkey"] = multiprocessing.process.AuthenticationString(bytes(authkey))
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)


class DecodePool:
    """Worker processes running :func:`prepare_file`, each file with a time limit.

    Pillow cannot be interrupted inside a thread, so a file that decodes for too long would hold
    a reader thread (and its memory) for as long as it takes. Here its worker process is killed
    and replaced instead: the file is quarantined and the other files go on. A decoder that
    crashes the process (a segfault in a C library) only costs that one file too. Workers are
    spawned, not forked: forking a process that has LanceDB open can hang.
    """

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        _allow_children()
        self._pool = ProcessPool(
            max_workers=workers,
            context=multiprocessing.get_context("spawn"),
            initializer=_warm_worker,
        )

    def submit(self, path: Path, **options: object) -> Future[PreparedFile]:
        """Schedule :func:`prepare_file` (same keyword arguments); see :meth:`result`."""
        return self._pool.schedule(
            prepare_file, args=(path,), kwargs=options, timeout=self.timeout_s
        )

    def result(self, future: Future[PreparedFile], path: Path, max_bytes: int) -> PreparedFile:
        """The worker's answer, or the reason there is none: over the time limit, or the
        worker died. The file's hash is then taken here, so the quarantine entry is kept until
        the file changes rather than decoded (for as long again) on every run."""
        try:
            return future.result()
        except FutureTimeout:
            error = f"decoding took longer than {self.timeout_s:g} s (LOOKALIKE_DECODE_TIMEOUT_S)"
        except ProcessExpired as exc:
            error = f"the decoder crashed: {exc}"
        try:
            sha = hashlib.sha256(read_file(path, max_bytes)).hexdigest()
        except UnreadableFile:
            sha = ""
        return PreparedFile(sha256=sha, error=error)

    def close(self) -> None:
        """Stop the workers (files still queued are dropped: their run did not finish)."""
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
