"""Image operations for dataset preparation: safe decoding, orientation, colour, resize and
crop, face blurring, perceptual hashing and encoding. Pure functions on bytes and
Pillow images; nothing here does I/O or knows about items.

Speed comes from never touching more pixels than the output needs: JPEGs are decoded
with libjpeg's DCT scaling (``Image.draft``) at the smallest scale that still covers
the output, resizing uses Pillow's ``reducing_gap`` (integer box reduction before the
filter), and the resize and the crop are one operation. Face detection is in :mod:`faces`.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

Crop = Literal["center", "random", "none"]

#: Formats accepted as dataset images; anything else is dropped as corrupt.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
#: Pixel count above which an image is treated as a decompression bomb (dropped as corrupt),
#: checked from the header before decoding. Pillow's own guard (Image.MAX_IMAGE_PIXELS,
#: ~89 MP) stays in force too: its warning and error also count as a bomb.
MAX_IMAGE_PIXELS = 80_000_000
#: Encoded size above which a file is not even opened (dropped as corrupt).
MAX_FILE_BYTES = 200 * 1024 * 1024
#: A face region is pixelated into this many cells across, then blurred: irreversible.
PIXELATE_CELLS = 6
PNG_COMPRESS_LEVEL = 1


class Rejected(Exception):
    """An item is dropped: ``reason`` is a manifest drop key, ``detail`` a finer cause."""

    def __init__(self, reason: str, detail: str, message: str = "") -> None:
        super().__init__(message or detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- decoding


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open (not decode) an image, refusing anything that is not a safe JPEG/PNG/WebP."""
    if len(data) > MAX_FILE_BYTES:
        raise Rejected("corrupt", "fileTooLarge", f"{len(data)} bytes > {MAX_FILE_BYTES}")
    if not data:
        raise Rejected("corrupt", "empty", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("corrupt", "decompressionBomb", str(exc)) from None
    except UnidentifiedImageError:
        raise Rejected("corrupt", "notAnImage", "not a JPEG, PNG or WebP image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise Rejected("corrupt", "unreadable", str(exc)) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise Rejected("corrupt", "unreadable", f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise Rejected("corrupt", "decompressionBomb", f"{width}x{height} exceeds {max_pixels} pixels")
    return image


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """The size after EXIF orientation, read from the header without decoding."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def decode(image: Image.Image, min_short_side: int) -> Image.Image:
    """Decode ``image`` (JPEG: at the smallest DCT scale whose short side is still
    ``>= min_short_side``), apply EXIF orientation and convert to RGB."""
    if image.format == "JPEG":
        width, height = image.size
        short = min(width, height)
        if short > min_short_side:
            # draft() keeps both sides >= the requested ones; ask for the aspect-correct size.
            scale = short / max(1, min_short_side)
            image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            oriented = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("corrupt", "decompressionBomb", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise Rejected(
            "corrupt", "truncated" if "truncated" in str(exc) else "unreadable", str(exc)
        ) from None
    return to_rgb(oriented if oriented is not None else image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparency is composited over white, 16-bit grey scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode == "RGB":
            return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Placement:
    """Where the output comes from: ``box`` in source pixels, resized to ``size``."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]

    def to_output(
        self, rect: tuple[float, float, float, float], source_scale: float = 1.0
    ) -> tuple[int, int, int, int]:
        """A rectangle in (scaled) source pixels mapped into output pixels, clipped."""
        left, top, right, bottom = self.box
        sx = self.size[0] / (right - left)
        sy = self.size[1] / (bottom - top)
        x0, y0, x1, y1 = (v / source_scale for v in rect)
        out = (
            math.floor((x0 - left) * sx),
            math.floor((y0 - top) * sy),
            math.ceil((x1 - left) * sx),
            math.ceil((y1 - top) * sy),
        )
        return (max(0, out[0]), max(0, out[1]), min(self.size[0], out[2]), min(self.size[1], out[3]))


def placement(
    size: tuple[int, int], resolution: int, crop: Crop, rng: np.random.Generator | None = None
) -> Placement:
    """The crop box and output size for an image of ``size``.

    ``center``/``random``: the largest square (centred, or at a seeded random offset),
    scaled to ``resolution``². ``none``: the whole image, short side scaled to
    ``resolution``, aspect ratio kept.
    """
    width, height = size
    if crop == "none":
        scale = resolution / min(width, height)
        out = (max(1, round(width * scale)), max(1, round(height * scale)))
        return Placement((0.0, 0.0, float(width), float(height)), out)
    side = min(width, height)
    if crop == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        left = float(rng.integers(0, width - side + 1))
        top = float(rng.integers(0, height - side + 1))
    else:
        left = (width - side) / 2
        top = (height - side) / 2
    return Placement((left, top, left + side, top + side), (resolution, resolution))


def render(image: Image.Image, where: Placement) -> Image.Image:
    """Crop and resize in one pass (Lanczos, with integer pre-reduction for big ratios)."""
    return image.resize(where.size, Image.Resampling.LANCZOS, box=where.box, reducing_gap=3.0)


# --------------------------------------------------------------------------- faces


def grow(box: tuple[float, float, float, float], factor: float) -> tuple[float, float, float, float]:
    """A box enlarged around its centre (faces: hair, ears and chin, not just the detector's core)."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return (x0 - dx, y0 - dy * 1.3, x1 + dx, y1 + dy)


def anonymise(image: Image.Image, boxes: list[tuple[int, int, int, int]]) -> Image.Image:
    """Pixelate each box into ~``PIXELATE_CELLS`` cells and blur it: the region keeps only a
    few dozen average colours, so the face cannot be recovered."""
    if not boxes:
        return image
    out = image.copy()
    for x0, y0, x1, y1 in boxes:
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        region = out.crop((x0, y0, x1, y1))
        cells = (max(1, min(PIXELATE_CELLS, region.width)), max(1, min(PIXELATE_CELLS, region.height)))
        small = region.resize(cells, Image.Resampling.BOX)
        blocky = small.resize(region.size, Image.Resampling.NEAREST)
        radius = max(1.0, min(region.size) / PIXELATE_CELLS / 2)
        out.paste(blocky.filter(ImageFilter.GaussianBlur(radius)), (x0, y0))
    return out


# --------------------------------------------------------------------------- hashing and encoding


def perceptual_hash(image: Image.Image) -> tuple[int, bytes]:
    """A 63-bit DCT perceptual hash (pHash: the signs of the 8×8 lowest frequencies but
    the DC term, against their median) plus a colour layout (mean colour of each cell of
    a 4×4 grid, 48 bytes).

    The pHash sees structure in grey; the colour layout tells a red circle from a blue one
    of the same brightness, or from a small shape elsewhere on the same background.
    Near-duplicates agree on both (see :mod:`dedupe`).
    """
    import cv2

    small = image.resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=2.0)
    rgb = np.asarray(small, dtype=np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    low = cv2.dct(grey)[:8, :8].flatten()
    bits = low[1:] > np.median(low[1:])  # the DC term says brightness, not structure
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    layout = rgb.reshape(4, 8, 4, 8, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return value, layout.tobytes()


def encode_png(image: Image.Image, exif: bytes | None = None) -> bytes:
    """A fresh PNG with no metadata chunks (``exif`` only when metadata is kept).

    Without EXIF, libpng through OpenCV with one filter for every row (average) and
    zlib's run-length strategy at level 1: at 256² about half the time of Pillow's
    adaptive per-row filtering at the same level, and ~7 % smaller files (measured on
    photographs, docs/benchmarks.md). Lossless either way; the same pixels give the same
    bytes, so content hashes stay deterministic."""
    if exif or image.mode != "RGB":
        buffer = io.BytesIO()
        params: dict[str, object] = {"compress_level": PNG_COMPRESS_LEVEL}
        if exif:
            params["exif"] = exif
        image.save(buffer, format="PNG", **params)
        return buffer.getvalue()
    import cv2

    ok, data = cv2.imencode(
        ".png",
        cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR),
        [
            cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESS_LEVEL,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
        ],
    )  # fmt: skip
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def kept_exif(image: Image.Image) -> bytes | None:
    """The source's EXIF minus orientation (applied by :func:`decode`) — for ``stripMetadata: false``.

    Edits a copy: ``image.getexif()`` is the image's own cached EXIF, which ``decode``'s
    ``exif_transpose`` reads later; popping the orientation there left photos sideways (and the
    face search looking at a sideways image)."""
    try:
        source = image.getexif()
        if not source:
            return None
        exif = Image.Exif()
        exif.load(source.tobytes())
    except Exception:
        return None
    exif.pop(0x0112, None)
    return exif.tobytes() if exif else None
