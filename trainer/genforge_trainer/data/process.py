"""One item, start to finish, in a worker process: the per-item half of ``prepare``.

:func:`process_item` takes an :class:`ItemRef` and returns an :class:`Outcome`: either a
drop reason, or the encoded output image with its hashes and metadata. Checks run
cheapest first, and the first failing one names the drop reason:

1. licence (metadata only): ``unlicensed``, ``licenseNotAllowed``;
2. reading and decoding: ``corrupt`` (unreadable, truncated, not a JPEG/PNG/WebP,
   unsupported format, decompression bomb);
3. size, from the header before decoding: ``tooSmall`` (short side < ``minResolution``).

Near-duplicates and ``maxItems`` depend on the items before this one, so the parent
decides those (``duplicate``, ``overLimit``) in source order.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from genforge_trainer.data import faces, imageops, redact
from genforge_trainer.data.imageops import Crop, Rejected
from genforge_trainer.data.sources import ItemRef, normalize_license, read_image, read_metadata
from genforge_trainer.exitcodes import StorageError

log = logging.getLogger(__name__)

#: Drop reasons, in the manifest's (and the termination message's) order.
DROP_REASONS = ("corrupt", "tooSmall", "duplicate", "unlicensed", "licenseNotAllowed", "overLimit")


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs, resolved once from the run spec (picklable)."""

    resolution: int = 64
    crop: Crop = "center"
    min_resolution: int = 0
    dedupe: bool = True
    max_items: int | None = None
    blur_faces: bool = False
    strip_metadata: bool = True
    redact_captions: bool = True
    allowed_licenses: tuple[str, ...] = ()
    require_license: bool = False
    max_image_pixels: int = imageops.MAX_IMAGE_PIXELS

    def as_document(self) -> dict[str, object]:
        """The settings as recorded in the manifest (and hashed into contentHash)."""
        return {
            "preparation": {
                "resolution": self.resolution,
                "crop": self.crop,
                "minResolution": self.min_resolution,
                "dedupe": self.dedupe,
                "maxItems": self.max_items,
            },
            "privacy": {
                "blurFaces": self.blur_faces,
                "stripMetadata": self.strip_metadata,
                "redactCaptions": self.redact_captions,
            },
            "license": {"allowed": list(self.allowed_licenses), "requireLicense": self.require_license},
            "maxImagePixels": self.max_image_pixels,
            "format": "png",
        }


@dataclass
class Outcome:
    index: int
    key: str
    source: str
    reason: str | None = None  # a DROP_REASONS entry when dropped
    detail: str | None = None  # finer cause, e.g. "truncated", "decompressionBomb"
    message: str = ""
    png: bytes | None = None
    sha256: str | None = None
    phash: int = 0
    layout: bytes = b""
    width: int = 0
    height: int = 0
    caption: str | None = None
    license: str | None = None
    label: str | None = None
    attribution: str | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    faces: int = 0

    @property
    def kept(self) -> bool:
        return self.reason is None


def crop_seed(key: str) -> np.random.Generator:
    """The random-crop generator of one item: a function of its stable key only."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def license_verdict(license_id: str | None, settings: Settings) -> tuple[str, str] | None:
    """``(reason, detail)`` when the licence policy drops the item, else ``None``."""
    if license_id is None:
        if settings.require_license:
            return "unlicensed", "noLicense"
        return None
    allowed = {normalize_license(a) for a in settings.allowed_licenses} - {None}
    if allowed and license_id not in allowed:
        return "licenseNotAllowed", license_id
    return None


def process_item(ref: ItemRef, settings: Settings) -> Outcome:
    """Prepare one item; never raises for a bad item (it is an Outcome with a reason)."""
    outcome = Outcome(index=ref.index, key=ref.key, source=ref.source)
    try:
        _prepare(ref, settings, outcome)
    except Rejected as rejected:
        outcome.reason, outcome.detail, outcome.message = rejected.reason, rejected.detail, str(rejected)
        outcome.png = None
    except Exception as exc:  # noqa: BLE001 - one odd file must not fail the whole dataset
        log.warning(
            "dropping %s: unexpected %s while preparing it", ref.source, type(exc).__name__, exc_info=True
        )
        outcome.reason, outcome.detail, outcome.message = (
            "corrupt",
            "processingError",
            f"{type(exc).__name__}: {exc}",
        )
        outcome.png = None
    return outcome


def _prepare(ref: ItemRef, settings: Settings, out: Outcome) -> None:
    meta = read_metadata(ref)
    verdict = license_verdict(meta.license, settings)
    if verdict is not None:
        raise Rejected(*verdict)
    if ref.unsupported:
        raise Rejected("corrupt", "unsupportedFormat", "not a JPEG, PNG or WebP image")
    try:
        raw = read_image(ref)
    except FileNotFoundError as exc:
        raise Rejected("corrupt", "unreadable", f"vanished: {exc}") from None
    except (OSError, StorageError) as exc:
        raise Rejected("corrupt", "unreadable", str(exc)) from None

    exif = None
    if not isinstance(raw, bytes):
        image = imageops.to_rgb(raw)
        if min(image.size) < settings.min_resolution:
            raise Rejected("tooSmall", "tooSmall", f"{image.width}x{image.height}")
    else:
        opened = imageops.open_image(raw, settings.max_image_pixels)
        width, height = imageops.oriented_size(opened)
        if min(width, height) < settings.min_resolution:
            raise Rejected("tooSmall", "tooSmall", f"{width}x{height} < {settings.min_resolution}")
        if not settings.strip_metadata:
            exif = imageops.kept_exif(opened)
        need = settings.resolution
        if settings.blur_faces:  # the detector sees the crop at its own input size at least
            need = max(need, faces.INPUT_SIZE)
        image = imageops.decode(opened, need)

    where = imageops.placement(
        image.size,
        settings.resolution,
        settings.crop,
        crop_seed(ref.key) if settings.crop == "random" else None,
    )
    output = imageops.render(image, where)
    if settings.blur_faces:
        per_pixel = where.size[0] / (where.box[2] - where.box[0])
        found = faces.detector().detect(image, where.box, per_pixel, output=output)
        regions = [where.to_output(imageops.grow(face.box, 0.25)) for face in found]
        regions = [r for r in regions if r[2] > r[0] and r[3] > r[1]]
        output = imageops.anonymise(output, regions)
        out.faces = len(regions)
    if settings.dedupe:
        out.phash, out.layout = imageops.perceptual_hash(image)

    png = imageops.encode_png(output, exif=exif)
    out.png = png
    out.sha256 = hashlib.sha256(png).hexdigest()
    out.width, out.height = output.size
    caption = meta.caption
    if caption is not None and settings.redact_captions:
        caption, out.redactions = redact.redact(caption)
    out.caption = caption
    out.license = meta.license
    out.label = meta.label
    out.attribution = meta.attribution
    if meta.origin:
        out.source = meta.origin if "://" not in meta.origin else _redacted(meta.origin)


def _redacted(url: str) -> str:
    from genforge_trainer.storage import redact_url

    return redact_url(url)


def process_chunk(refs: list[ItemRef], settings: Settings) -> list[Outcome]:
    """A batch of items (one task of the process pool)."""
    return [process_item(ref, settings) for ref in refs]
