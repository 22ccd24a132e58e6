"""Face detection for ``blurFaces``: recall by face size, false positives and cost, of the
detector prepare uses (BlazeFace on LiteRT, searched over the output's crop) against
the one it used before (OpenCV's Haar cascade over the whole picture at a working size
whose short side is the output resolution, >= 128 px, scale step 1.1, 3 neighbours,
faces >= 24 px).

Test pictures, all offline: photographs without people (scikit-image's samples, randomly
cropped, flipped, jittered and scaled to ~1 MP, saved as JPEG), into which one face is
pasted at a known place and size inside the output's crop:

* **real**: the astronaut's and the cameraman's heads (scikit-image), with hair and
  surroundings, mirrored at random;
* **lfw**: 100 faces of scikit-image's LFW subset (25×25 grey, tightly cropped, no hair or
  background: harder for any detector, and unlike photographs), upscaled.

A face counts as found when a detected box contains its centre. False positives: the same
photographs with nothing pasted, any detection counts. Cost: CPU time of the detection
step per image (``time.process_time``), decoding excluded.

Usage::

    python benchmarks/bench_faces.py [--resolution 64 128 256] [--trials 60] [--backgrounds 100]

Prints Markdown tables for docs/benchmarks.md. No torch.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time

import numpy as np
from bench_prepare import jittered, sample_photo
from PIL import Image, ImageOps

from genforge_trainer.data import faces, imageops

NO_PEOPLE = ("coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "cat", "coins", "motorcycle_right")
SIZES = (12, 16, 20, 24, 32, 48, 64)


def backgrounds(count: int, rng: np.random.Generator) -> list[Image.Image]:
    bases = [b for b in map(sample_photo, NO_PEOPLE) if b is not None]
    return [jittered(bases[i % len(bases)], rng, (0.7, 1.3), colour=False) for i in range(count)]


def real_heads() -> list[tuple[Image.Image, float]]:
    """(head picture, face width as a fraction of the picture's width)."""
    heads = []
    for name in ("astronaut", "camera"):
        picture = sample_photo(name)
        found = faces.detector().detect(picture, (0.0, 0.0, float(picture.width), float(picture.height)), 1.0)
        x0, y0, x1, y1 = found[0].box
        w, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
        heads.append((picture.crop((int(cx - w), int(cy - w * 1.1), int(cx + w), int(cy + w * 0.9))), 0.5))
    return heads


def lfw_faces() -> list[tuple[Image.Image, float]]:
    import skimage.data

    return [
        (Image.fromarray((f * 255).astype(np.uint8)).convert("RGB"), 0.9)
        for f in skimage.data.lfw_subset()[:100]
    ]


def paste(background: Image.Image, head: Image.Image, fraction: float, resolution: int, face_px: int, rng):
    """JPEG bytes of ``background`` with ``head`` pasted so the face is ``face_px`` output
    pixels wide, somewhere inside the centre crop; and the face's centre in source pixels."""
    picture = background.copy()
    where = imageops.placement(picture.size, resolution, "center")
    x0, y0, x1, y1 = where.box
    per_output = (x1 - x0) / resolution
    width = max(4, int(face_px * per_output / fraction))
    height = max(4, int(width * head.height / head.width))
    if width > x1 - x0 or height > y1 - y0:
        return None
    if rng.random() < 0.5:
        head = ImageOps.mirror(head)
    head = head.resize((width, height), Image.Resampling.LANCZOS)
    px, py = int(rng.uniform(x0, x1 - width)), int(rng.uniform(y0, y1 - height))
    picture.paste(head, (px, py))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), (px + width / 2, py + height / 2)


# --------------------------------------------------------------------------- detectors


def genforge_detector(data: bytes, resolution: int):
    """As ``prepare`` runs it: draft decode, render the output, search the output's crop
    (finer passes resampled from the rendered output); the render is not timed (prepare
    renders the output with or without face blur)."""
    image = imageops.decode(imageops.open_image(data), max(resolution, faces.INPUT_SIZE))
    where = imageops.placement(image.size, resolution, "center")
    output = imageops.render(image, where)
    start = time.process_time()
    found = faces.detector().detect(
        image, where.box, resolution / (where.box[2] - where.box[0]), output=output
    )
    return [f.box for f in found], image.width, time.process_time() - start


_CASCADE = None


def previous_detector(data: bytes, resolution: int):
    """genforge before: Haar cascade on the whole picture, short side = resolution (>= 128)."""
    import cv2

    global _CASCADE
    if _CASCADE is None:
        _CASCADE = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    short = min(max(resolution, 128), 720)
    image = imageops.decode(imageops.open_image(data), short)
    start = time.process_time()
    scale = min(1.0, short / min(image.size))
    grey = image.convert("L")
    if scale < 1.0:
        grey = grey.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR
        )
    found = _CASCADE.detectMultiScale(
        cv2.equalizeHist(np.asarray(grey)), scaleFactor=1.1, minNeighbors=3, minSize=(24, 24)
    )
    boxes = [
        (x / scale, y / scale, (x + w) / scale, (y + h) / scale)
        for (x, y, w, h) in (found if len(found) else [])
    ]
    return boxes, image.width, time.process_time() - start


DETECTORS = {
    f"genforge (BlazeFace, {faces.detector().backend})": genforge_detector,
    "before (Haar cascade)": previous_detector,
}


def _hit(boxes, centre, image_width: int, source_width: int) -> bool:
    s = image_width / source_width  # decoded pixels per source pixel
    cx, cy = centre[0] * s, centre[1] * s
    return any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--trials", type=int, default=60, help="pasted faces per size and set")
    parser.add_argument("--backgrounds", type=int, default=100)
    parser.add_argument("--no-haar", action="store_true", help="genforge's detector only")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    bgs = backgrounds(args.backgrounds, rng)
    sets = {"real": real_heads(), "lfw": lfw_faces()}
    import cv2

    print(
        f"{len(bgs)} photographs without people (~1 MP); {platform.machine()}, Python {platform.python_version()}, "
        f"OpenCV {cv2.__version__}\n"
    )
    for resolution in args.resolution:
        print(
            f"**{resolution} px output** — faces found (of {args.trials}) by face width in output pixels; "
            "CPU ms per image for detection\n"
        )
        sizes = [s for s in SIZES if s <= resolution * 0.4]
        print(
            "| detector | set | "
            + " | ".join(f"{s} px" for s in sizes)
            + " | ms/image | photos without people flagged |"
        )
        print("|---|---|" + "---:|" * len(sizes) + "---:|---:|")
        for name, detect in list(DETECTORS.items())[: 1 if args.no_haar else None]:
            cpu = calls = 0
            fp = 0
            for bg in bgs:
                buffer = io.BytesIO()
                bg.save(buffer, "JPEG", quality=90)
                boxes, _, t = detect(buffer.getvalue(), resolution)
                fp += bool(boxes)
                cpu += t
                calls += 1
            for set_name, heads in sets.items():
                cells = []
                for size in sizes:
                    hits = total = 0
                    trial_rng = np.random.default_rng(size)  # the same pictures for every detector
                    for k in range(args.trials):
                        head, fraction = heads[k % len(heads)]
                        bg = bgs[k % len(bgs)]
                        made = paste(bg, head, fraction, resolution, size, trial_rng)
                        if made is None:
                            continue
                        data, centre = made
                        boxes, width, t = detect(data, resolution)
                        hits += _hit(boxes, centre, width, bg.width)
                        total += 1
                        cpu += t
                        calls += 1
                    cells.append(f"{100 * hits / max(total, 1):.0f} %")
                print(
                    f"| {name} | {set_name} | "
                    + " | ".join(cells)
                    + f" | {1000 * cpu / calls:.1f} | {fp}/{len(bgs)} |",
                    flush=True,
                )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
