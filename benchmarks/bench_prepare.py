"""Dataset preparation throughput: genforge's ``prepare`` against a competent plain Pillow loop.

Builds a folder of JPEG photographs (600–1200 px on the long side, made from
scikit-image's sample photos with random crops, flips, colour jitter and rescaling; GPS
EXIF on every third, an EXIF orientation on every fifth (stored sideways, as cameras do);
one in seven shows the astronaut's face; ``motorcycle_left`` needs a download and is skipped), then measures on the same files, interleaved:

* **plain**: the loop a competent engineer writes in a few lines, no privacy work —
  :func:`plain_loop`: ``Image.draft`` (JPEG DCT-scaled decoding), ``exif_transpose``,
  one Lanczos resize with ``reducing_gap`` straight from the centre square, PNG at
  ``compress_level=1``;
* **genforge, full privacy**: ``prepare`` in one process with face blur + metadata strip
  + caption redaction + dedupe;
* **genforge, no face blur**: the same without face blur.

Each trial runs every variant once, in turn (plain, full, no blur), so slow phases of a
shared machine hit all of them; the figure is images per CPU-second of this process
(``time.process_time``), and the ratio is taken within a trial. One untimed warm-up pass
first loads OpenCV and the face model (steady state: a worker loads them once).

Usage::

    python benchmarks/bench_prepare.py [--images 120] [--resolution 64 128 256 512] [--trials 3]
    python benchmarks/bench_prepare.py --steps   # CPU ms per image of each step instead

Prints a Markdown table for docs/benchmarks.md. No torch.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from genforge_trainer.data import parallel
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


def _exif(gps: bool, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"
    if orientation != 1:
        exif[0x0112] = orientation
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})
    return exif.tobytes()


def build_photos(directory: str, count: int, seed: int = 0) -> tuple[int, int]:
    """Write ``count`` JPEG photos, 600–1200 px on the long side; return (total bytes, total pixels)."""
    rng = np.random.default_rng(seed)
    bases = _base_images()
    total_bytes = total_pixels = 0
    lines = []
    for i in range(count):
        image = jittered(bases[i % len(bases)], rng, (0.5, 0.5))
        scale = float(rng.uniform(600, 1200)) / max(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
        )
        orientation = 6 if i % 5 == 0 else 1
        if orientation == 6:  # stored sideways: exif_transpose turns it back (90° clockwise)
            image = image.transpose(Image.Transpose.ROTATE_90)
        buffer = io.BytesIO()
        params: dict[str, object] = {"quality": int(rng.integers(85, 96))}
        if i % 3 == 0 or orientation != 1:
            params["exif"] = _exif(gps=i % 3 == 0, orientation=orientation)
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
    """The competent resize-only loop (shown in docs/benchmarks.md)."""
    size = (resolution, resolution)
    for i, path in enumerate(files):
        with Image.open(path) as image:
            image.draft("RGB", size)  # JPEG: decode at the smallest DCT scale >= size
            image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                image = image.convert("RGB")
            w, h = image.size
            s = min(w, h)
            box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
            image = image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
            image.save(os.path.join(out_dir, f"{i:06d}.png"), compress_level=1)


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


def timed(fn, root: str) -> float:
    """CPU seconds of this process for ``fn(out_dir)`` on a fresh output folder."""
    out = tempfile.mkdtemp(dir=root)
    try:
        start = time.process_time()
        fn(out)
        return time.process_time() - start
    finally:
        shutil.rmtree(out)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min–max)``."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def step_costs(files: list[str], resolution: int, repeat: int = 3) -> dict[str, float]:
    """CPU ms per image of each step of genforge's per-item work (best of ``repeat``), and of
    the face model alone: one forward per pass on LiteRT and on OpenCV DNN."""
    from genforge_trainer.data import faces, imageops

    datas = [open(path, "rb").read() for path in files]
    detector = faces.detector()
    opencv = faces.FaceDetector(backend="opencv")
    best: dict[str, float] = {}
    for _ in range(repeat):
        cpu: dict[str, float] = {}

        def clock(name: str, start: float, cpu: dict[str, float] = cpu) -> float:
            now = time.process_time()
            cpu[name] = cpu.get(name, 0.0) + now - start
            return now

        for data in datas:
            t = time.process_time()
            image = imageops.decode(imageops.open_image(data), max(resolution, faces.INPUT_SIZE))
            t = clock("decode (draft, exif_transpose)", t)
            where = imageops.placement(image.size, resolution, "center")
            output = imageops.render(image, where)
            t = clock("crop + Lanczos resize", t)
            found = detector.detect(
                image, where.box, resolution / (where.box[2] - where.box[0]), output=output
            )
            t = clock(f"face search, all passes ({detector.backend})", t)
            opencv.detect(image, where.box, resolution / (where.box[2] - where.box[0]), output=output)
            t = clock("face search, all passes (opencv)", t)
            boxes = [where.to_output(imageops.grow(f.box, 0.25)) for f in found]
            output = imageops.anonymise(output, boxes)
            t = clock("blur found faces", t)
            imageops.perceptual_hash(image)
            t = clock("pHash + colour layout", t)
            imageops.encode_png(output)
            t = clock("PNG, genforge's encoder", t)
            output.save(io.BytesIO(), "PNG", compress_level=1)
            clock("PNG, Pillow level 1 (the plain loop's)", t)
        for name, value in cpu.items():
            best[name] = min(best.get(name, float("inf")), 1000 * value / len(datas))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--trials", type=int, default=3, help="interleaved trials per resolution")
    parser.add_argument("--steps", action="store_true", help="instead: CPU ms per image of each step")
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
            f"Python {platform.python_version()}, Pillow {Image.__version__}, OpenCV {_cv2_version()}; "
            + (
                "CPU ms per image, best of 3 passes\n"
                if args.steps
                else f"{args.trials} interleaved trials, median (min–max)\n"
            )
        )
        if args.steps:
            print("| step | " + " | ".join(f"{r} px" for r in args.resolution) + " |")
            print("|---|" + "---:|" * len(args.resolution))
            costs = {r: step_costs(files, r) for r in args.resolution}
            for name in costs[args.resolution[0]]:
                print(f"| {name} | " + " | ".join(f"{costs[r][name]:.2f}" for r in args.resolution) + " |")
            return 0
        print("| resolution | variant | images per CPU-second | vs plain, per core |")
        print("|---:|---|---:|---:|")
        manifests: dict[str, dict] = {}
        variants = {
            "plain": lambda out, r: plain_loop(files, out, r),
            "full": lambda out, r: manifests.__setitem__("full", genforge(photos, out, r, 1, True)),
            "noblur": lambda out, r: manifests.__setitem__("noblur", genforge(photos, out, r, 1, False)),
        }
        names = {
            "plain": "competent plain loop (draft, exif_transpose, Lanczos, PNG level 1)",
            "full": "genforge: face blur + metadata strip + redaction + dedupe",
            "noblur": "genforge: metadata strip + redaction + dedupe (no face blur)",
        }
        for resolution in args.resolution:
            for fn in variants.values():  # warm-up: imports, the face model, file cache
                timed(lambda out, f=fn, r=resolution: f(out, r), root)
            rates: dict[str, list[float]] = {k: [] for k in variants}
            ratios: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.trials):
                trial = {
                    k: n / timed(lambda out, f=fn, r=resolution: f(out, r), root)
                    for k, fn in variants.items()
                }
                for k, rate in trial.items():
                    rates[k].append(rate)
                    ratios[k].append(rate / trial["plain"])
            for k in variants:
                ratio = spread(ratios[k]) + "×"
                print(f"| {resolution} | {names[k]} | {spread(rates[k], '{:.1f}')} | {ratio} |")
            m = manifests["full"]
            print(
                f"| {resolution} | (kept {m['items']['kept']} of {m['items']['total']}, "
                f"{m['items']['dropped']['duplicate']} near-duplicates, faces blurred in "
                f"{m['faces']['imagesWithFaces']} images) | | |",
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
