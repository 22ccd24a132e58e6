"""Image fixtures for the dataset-preparation tests: bytes of every kind a real folder holds."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(name: str = "astronaut") -> Image.Image:
    """A real photograph shipped with scikit-image (offline)."""
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3])


def faces_found(image: Image.Image) -> list[tuple[float, float, float, float]]:
    """Faces genforge's detector finds anywhere in ``image`` (searched as an output of its own size)."""
    from genforge_trainer.data import faces

    return [
        f.box
        for f in faces.detector().detect(image, (0.0, 0.0, float(image.width), float(image.height)), 1.0)
    ]


def haar_faces(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """A second opinion from an unrelated detector: OpenCV's Haar cascade (shipped by
    opencv-python-headless 4.x), with its usual settings."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    assert not cascade.empty()
    grey = cv2.equalizeHist(np.asarray(image.convert("L")))
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
    return [(int(x), int(y), int(x + w), int(y + h)) for (x, y, w, h) in (found if len(found) else [])]


def textured(size: tuple[int, int] = (96, 80), seed: int = 0) -> Image.Image:
    """A smooth random picture: distinct seeds give images that are not near-duplicates."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg(image: Image.Image | None = None, **params) -> bytes:
    return encode(
        image if image is not None else textured(), "JPEG", quality=params.pop("quality", 90), **params
    )


def png(image: Image.Image | None = None, **params) -> bytes:
    return encode(image if image is not None else textured(), "PNG", **params)


def gps_exif(orientation: int | None = None) -> bytes:
    """EXIF with a camera model, a GPS position and optionally an orientation."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0110] = "Model X"  # Model
    if orientation is not None:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 7.0)})
    return exif.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` pixels in a few bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def write(directory: Path, files: dict[str, bytes | str]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return directory


def has_metadata(data: bytes) -> list[str]:
    """What metadata an encoded output still carries (empty: none)."""
    found = []
    image = Image.open(io.BytesIO(data))
    if image.getexif():
        found.append("exif")
    for key in image.info:
        if key.lower() in ("exif", "xmp", "xml:com.adobe.xmp", "icc_profile", "comment") or isinstance(
            image.info[key], str
        ):
            found.append(key)
    for marker in (b"eXIf", b"Exif\x00\x00", b"GPS", b"tEXt", b"iTXt", b"zTXt", b"TestCam"):
        if marker in data:
            found.append(marker.decode("latin-1"))
    return found
