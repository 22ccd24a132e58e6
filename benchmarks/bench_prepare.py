"""Dataset preparation throughput: genforge's ``prepare`` against a plain Pillow loop.

Builds a folder of JPEG photographs (~1–2 MP, made from scikit-image's sample photos
with random crops, flips, colour jitter, rescaling and GPS EXIF on some), then measures,
on the same files in the same run:

* **plain**: one process, ``Image.open → convert("RGB") → ImageOps.fit(resolution²,
  LANCZOS) → save PNG`` (same PNG compression level as genforge), no privacy, no dedupe;
* **genforge, 1 worker**: ``prepare`` with face blur + metadata strip + dedupe on, in
  one process — the per-core figure; and the same without face blur, to show its cost;
* **naive**: the same privacy work done the obvious way (full decode, OpenCV's Haar
  cascade over the full-resolution picture), on a subset — what JPEG draft decoding and
  searching only the output's crop with a small DNN detector save;
* **genforge, N workers**: with the process pool over all cores.

"Per core" compares images per CPU-second of the measuring process (``time.process_time``)
for the single-process variants, so other load on a shared machine does not skew the ratio;
the N-worker row is wall-clock throughput divided by N, against the plain loop's wall
clock.

Usage::

    python benchmarks/bench_prepare.py [--images 300] [--resolution 64 128 256] [--workers N] [--repeat 3]

Prints a Markdown table for docs/benchmarks.md. No torch.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from genforge_trainer.data import imageops, parallel
from genforge_trainer.data.prepare import prepare
from genforge_trainer.data.process import Settings

SAMPLES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "retina",
    "cat",
)


def sample_photo(name: str) -> Image.Image | None:
    """One of scikit-image's sample pictures as RGB, or None if it needs a download."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        return None
    try:
        array = loader()
    except Exception:  # a sample that needs a download: skip it
        return None
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3].astype(np.uint8))


def _base_images() -> list[Image.Image]:
    return [image for image in map(sample_photo, SAMPLES) if image is not None]


def jittered(
    base: Image.Image, rng: np.random.Generator, megapixels: tuple[float, float], colour: bool = True
) -> Image.Image:
    """A random crop of ``base`` (70–100 %), mirrored half the time, brightness (and colour)
    jittered, rescaled to a random size in ``megapixels``."""
    w, h = base.size
    frac = rng.uniform(0.7, 1.0)
    cw, ch = int(w * frac), int(h * frac)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = base.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    if colour:
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    scale = (rng.uniform(*megapixels) * 1e6 / (cw * ch)) ** 0.5
    return image.resize((int(cw * scale), int(ch * scale)), Image.Resampling.BICUBIC)


def _gps_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})
    return exif.tobytes()


def build_photos(directory: str, count: int, seed: int = 0) -> tuple[int, int]:
    """Write ``count`` JPEG photos; return (total bytes, total pixels)."""
    rng = np.random.default_rng(seed)
    bases = _base_images()
    exif = _gps_exif()
    total_bytes = total_pixels = 0
    lines = []
    for i in range(count):
        image = jittered(bases[i % len(bases)], rng, (1.0, 2.0))
        buffer = io.BytesIO()
        params = {"quality": int(rng.integers(85, 96))}
        if i % 3 == 0:
            params["exif"] = exif
        image.save(buffer, "JPEG", **params)
        name = f"photo-{i:04d}.jpg"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(buffer.getvalue())
        total_bytes += buffer.tell()
        total_pixels += image.width * image.height
        lines.append(
            json.dumps(
                {"file_name": name, "caption": f"photo {i} by jo{i}@example.com", "license": "cc-by-4.0"}
            )
        )
    with open(os.path.join(directory, "metadata.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return total_bytes, total_pixels


def plain_loop(files: list[str], out_dir: str, resolution: int) -> None:
    for i, path in enumerate(files):
        image = Image.open(path).convert("RGB")
        image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.LANCZOS)
        image.save(os.path.join(out_dir, f"{i:06d}.png"), "PNG", compress_level=imageops.PNG_COMPRESS_LEVEL)


def naive_private_loop(files: list[str], out_dir: str, resolution: int) -> None:
    """The same privacy work done the obvious way: full decode, OpenCV's Haar cascade
    searched over the full-resolution picture, fit, blur, fresh PNG (no metadata), pHash."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    for i, path in enumerate(files):
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        grey = cv2.equalizeHist(np.asarray(image.convert("L")))
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        where = imageops.placement(image.size, resolution, "center")
        output = imageops.render(image, where)
        boxes = [where.to_output(imageops.grow((x, y, x + w, y + h), 0.25)) for (x, y, w, h) in found]
        output = imageops.anonymise(output, boxes)
        imageops.perceptual_hash(image)
        output.save(os.path.join(out_dir, f"{i:06d}.png"), "PNG", compress_level=imageops.PNG_COMPRESS_LEVEL)


def genforge(source: str, out_dir: str, resolution: int, workers: int, blur_faces: bool = True) -> dict:
    settings = Settings(
        resolution=resolution,
        crop="center",
        dedupe=True,
        blur_faces=blur_faces,
        strip_metadata=True,
        redact_captions=True,
    )
    return prepare(source, os.path.join(out_dir, "dataset"), settings, workers=workers, progress_bar=False)


def measure(fn, root: str, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` (wall seconds, CPU seconds of this process) for ``fn(out_dir)``."""
    walls, cpus = [], []
    for _ in range(repeat):
        out = tempfile.mkdtemp(dir=root)
        wall, cpu = time.perf_counter(), time.process_time()
        fn(out)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        shutil.rmtree(out)
    return min(walls), min(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--workers", type=int, default=parallel.available_cpus())
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per variant")
    parser.add_argument(
        "--naive-images", type=int, default=20, help="photos for the (slow) naive row; 0: skip"
    )
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="genforge-bench-")
    try:
        photos = os.path.join(root, "photos")
        os.makedirs(photos)
        nbytes, npixels = build_photos(photos, args.images)
        files = sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith(".jpg"))
        n = len(files)
        load = os.getloadavg()[0]
        print(
            f"{n} JPEG photos, {npixels / n / 1e6:.2f} MP and {nbytes / n / 1024:.0f} KiB on average; "
            f"{platform.machine()}, {parallel.available_cpus()} CPUs available, load average {load:.1f} at start; "
            f"Python {platform.python_version()}, Pillow {Image.__version__}, OpenCV {_cv2_version()}\n"
        )
        print(
            "| resolution | variant | processes | images/s (wall) | images per CPU-second | vs plain, per core |"
        )
        print("|---:|---|---:|---:|---:|---:|")
        manifests: dict[str, dict] = {}

        def run(out: str, r: int, workers: int, blur: bool, key: str) -> None:
            manifests[key] = genforge(photos, out, r, workers, blur)

        for resolution in args.resolution:
            plain_wall, plain_cpu = measure(
                lambda out, r=resolution: plain_loop(files, out, r), root, args.repeat
            )
            rows = [("plain Pillow loop: open, RGB, fit, save PNG", 1, plain_wall, plain_cpu)]
            manifests.clear()
            wall, cpu = measure(lambda out, r=resolution: run(out, r, 1, True, "one"), root, args.repeat)
            rows.append(("genforge: face blur + metadata strip + dedupe", 1, wall, cpu))
            wall, cpu = measure(lambda out, r=resolution: run(out, r, 1, False, "noblur"), root, args.repeat)
            rows.append(("genforge: metadata strip + dedupe (no face blur)", 1, wall, cpu))
            if args.naive_images:
                subset = files[: args.naive_images]
                wall, cpu = measure(
                    lambda out, r=resolution, f=subset: naive_private_loop(f, out, r), root, 1
                )
                scale = n / len(subset)  # report per image like the others
                rows.append(
                    ("naive: same privacy work at full resolution, no draft", 1, wall * scale, cpu * scale)
                )
            if args.workers > 1:
                wall, _ = measure(
                    lambda out, r=resolution: run(out, r, args.workers, True, "many"), root, args.repeat
                )
                rows.append(("genforge: face blur + metadata strip + dedupe", args.workers, wall, None))
            plain_per_cpu = n / plain_cpu
            for name, procs, wall, cpu in rows:
                per_cpu = f"{n / cpu:.1f}" if cpu else "—"
                ratio = (n / cpu) / plain_per_cpu if cpu else (n / wall / procs) / (n / plain_wall)
                print(f"| {resolution} | {name} | {procs} | {n / wall:.1f} | {per_cpu} | {ratio:.2f}× |")
            m = manifests["one"]
            print(
                f"| {resolution} | (kept {m['items']['kept']} of {m['items']['total']}, "
                f"{m['items']['dropped']['duplicate']} near-duplicates, faces blurred in "
                f"{m['faces']['imagesWithFaces']} images) | | | | |",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _cv2_version() -> str:
    import cv2

    return cv2.__version__


if __name__ == "__main__":
    sys.exit(main())
