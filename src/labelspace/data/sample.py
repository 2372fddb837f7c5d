"""The embedded default dataset: Fashion-MNIST garments composed into outfit canvases, written in
the NUS-WIDE release layout so the real data and the sample share one ingest path.

Each canvas is a 2x2 grid of 28 px cells (the grid shifted by a random offset inside a canvas of
`canvas_size` px, black background) holding 1 to 4 garments, all of them its labels. Canvases are
drawn from outfit kinds (the image's folder, like NUS-WIDE's Flickr query) so labels co-occur with
structure: a top with trousers and shoes, a dress with a bag, a coat with boots. Semantically close
labels (shirt / t-shirt / pullover, sneaker / sandal / ankle_boot) come with Fashion-MNIST itself.
A `blank_fraction` of canvases is left empty with no label, as the real release has such images.

Train canvases use Fashion-MNIST train images, test canvases its test images. Same parameters give
byte-identical files: one seeded generator per split, fixed JPEG settings, sorted lists, no dates.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelspace.config import SampleConfig

# Fashion-MNIST class index -> concept name. Lower case, `_` between words: the names appear in
# label file names and resolve to word vectors as the mean of their words (labelspace.data.word_vectors).
CONCEPTS_BY_CLASS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
CLASS = {name: i for i, name in enumerate(CONCEPTS_BY_CLASS)}

CELL = 28  # Fashion-MNIST image side
GRID = 2 * CELL
JPEG_QUALITY = 95
URL_BASE = "http://localhost/fashion-canvas"  # fake, for the download path's format only
BLANK_FOLDER = "blank"
SINGLE_FOLDER = "single"

# Outfit kinds: folder -> (weight, slots). A slot is (choices with weights, probability it is worn).
# Slots of one outfit never share a class, so each garment appears at most once per canvas.
Slot = tuple[dict[str, float], float]
OUTFITS: dict[str, tuple[float, list[Slot]]] = {
    "casual": (0.25, [({"t-shirt": 0.6, "pullover": 0.4}, 1.0), ({"trouser": 1}, 0.8),
                      ({"sneaker": 0.8, "sandal": 0.2}, 0.8), ({"bag": 1}, 0.15)]),
    "office": (0.15, [({"shirt": 1}, 1.0), ({"trouser": 1}, 0.9),
                      ({"ankle_boot": 0.6, "sneaker": 0.4}, 0.7), ({"bag": 1}, 0.3)]),
    "evening": (0.15, [({"dress": 1}, 1.0), ({"bag": 1}, 0.8), ({"sandal": 0.6, "ankle_boot": 0.4}, 0.6),
                       ({"coat": 1}, 0.15)]),
    "winter": (0.15, [({"coat": 1}, 1.0), ({"pullover": 1}, 0.6), ({"trouser": 1}, 0.5), ({"ankle_boot": 1}, 0.8)]),
    "summer": (0.12, [({"t-shirt": 0.7, "shirt": 0.3}, 1.0), ({"sandal": 1}, 0.8), ({"bag": 1}, 0.3),
                      ({"trouser": 1}, 0.2)]),
    "shoes": (0.08, [({"sneaker": 1}, 0.6), ({"sandal": 1}, 0.6), ({"ankle_boot": 1}, 0.6)]),
    SINGLE_FOLDER: (0.10, []),  # one garment of any class
}


# --- Fashion-MNIST ---------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(source: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of the 'train' or 'test' split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    source = Path(source)
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [source / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {candidates[0]} not found: install Debian's package "
                "(`apt-get install dataset-fashion-mnist`, or `make system-packages`), or pass --source DIR "
                "(sample.source in params.yaml) naming a folder with the four idx files"
            )
        found.append(_read_idx(path))
    images, labels = found
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (CELL, CELL):
        raise ValueError(f"{source}: unexpected Fashion-MNIST {split} shapes {images.shape}, {labels.shape}")
    return images, labels


# --- composition -----------------------------------------------------------------------------

def _draw_outfit(rng: np.random.Generator, cfg: SampleConfig) -> tuple[str, list[int]]:
    """(folder, garment classes) of one canvas."""
    if rng.random() < cfg.blank_fraction:
        return BLANK_FOLDER, []
    names = list(OUTFITS)
    weights = np.array([OUTFITS[n][0] for n in names])
    folder = names[rng.choice(len(names), p=weights / weights.sum())]
    garments: list[int] = []
    for choices, worn in OUTFITS[folder][1]:
        if rng.random() < worn:
            options = list(choices)
            p = np.array([choices[o] for o in options], dtype=float)
            garments.append(CLASS[options[rng.choice(len(options), p=p / p.sum())]])
    while len(garments) > cfg.max_items:
        garments.pop(int(rng.integers(len(garments))))
    while len(garments) < cfg.min_items:  # also how `single` gets its one garment
        extra = [c for c in range(len(CONCEPTS_BY_CLASS)) if c not in garments]
        garments.append(int(rng.choice(extra)))
    return folder, garments


def _compose(rng: np.random.Generator, garments: list[int], pools: list[np.ndarray],
             images: np.ndarray, canvas_size: int) -> np.ndarray:
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    y0, x0 = (int(v) for v in rng.integers(0, canvas_size - GRID + 1, size=2))
    cells = rng.permutation(4)[: len(garments)]
    for cls, cell in zip(garments, cells, strict=True):
        image = images[pools[cls][rng.integers(len(pools[cls]))]]
        y, x = y0 + CELL * (cell // 2), x0 + CELL * (cell % 2)
        canvas[y: y + CELL, x: x + CELL] = image
    return canvas


def _jpeg_bytes(gray: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # RGB like the Flickr photos; fixed settings and no metadata keep the bytes reproducible.
    Image.fromarray(gray).convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


@dataclass
class _Canvas:
    split: str
    folder: str
    file: str
    photo_id: int
    garments: list[int]
    jpeg: bytes


def _generate(cfg: SampleConfig) -> list[_Canvas]:
    canvases: list[_Canvas] = []
    serials: dict[str, int] = {}
    for split_index, (split, n) in enumerate((("train", cfg.n_train), ("test", cfg.n_test))):
        images, labels = load_fashion_mnist(cfg.source, split)
        pools = [np.flatnonzero(labels == c) for c in range(len(CONCEPTS_BY_CLASS))]
        rng = np.random.default_rng([cfg.seed, split_index])
        for _ in range(n):
            folder, garments = _draw_outfit(rng, cfg)
            pixels = _compose(rng, garments, pools, images, cfg.canvas_size)
            serials[folder] = serials.get(folder, 0) + 1
            photo_id = 1_000_000_000 + len(canvases)  # Flickr-like 10-digit id, unique in the dataset
            canvases.append(_Canvas(split, folder, f"{serials[folder]:04d}_{photo_id}.jpg", photo_id,
                                    sorted(garments), _jpeg_bytes(pixels)))
    return canvases


# --- NUS-WIDE layout -------------------------------------------------------------------------

def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def _write_layout(canvases: list[_Canvas], out: Path) -> None:
    concepts = sorted(CONCEPTS_BY_CLASS)  # Concepts81.txt is alphabetical in the real release
    _write_lines(out / "ConceptsList" / "Concepts81.txt", concepts)
    for split, list_name, suffix in (("train", "TrainImagelist.txt", "Train"), ("test", "TestImagelist.txt", "Test")):
        rows = sorted((c for c in canvases if c.split == split), key=lambda c: (c.folder, c.photo_id))
        _write_lines(out / "ImageList" / list_name, [f"{c.folder}\\{c.file}" for c in rows])
        for concept in concepts:
            cls = CLASS[concept]
            values = ["1" if cls in c.garments else "0" for c in rows]
            _write_lines(out / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{suffix}.txt", values)
    url_rows = ["%%% Photo_file Photo_id url_Large url_Middle url_Small url_Original"]
    for c in sorted(canvases, key=lambda c: (c.folder, c.photo_id)):
        url = f"{URL_BASE}/Flickr/{c.folder}/{c.file}"
        url_rows.append(f"C:\\ImageData\\Flickr\\{c.folder}\\{c.file} {c.photo_id} null {url} {url} null")
        image_path = out / "Flickr" / c.folder / c.file
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image_path.write_bytes(c.jpeg)
    _write_lines(out / "NUS-WIDE-urls.txt", url_rows)


def build_sample(out: str | os.PathLike, cfg: SampleConfig) -> dict:
    """Write the embedded dataset under `out` (replacing an earlier build); returns a summary."""
    problems = cfg.check()
    if problems:
        key, allowed = next(iter(problems.items()))
        raise ValueError(f"sample.{key} = {getattr(cfg, key)!r} must be {allowed}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "ConceptsList").is_dir():
        raise ValueError(f"{out} exists and is not a NUS-WIDE-layout dataset: choose another --out or empty it")
    canvases = _generate(cfg)
    # Built beside `out` and swapped in, so no file of an earlier, larger build survives.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _write_layout(canvases, partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    counts = np.bincount([g for c in canvases for g in c.garments], minlength=len(CONCEPTS_BY_CLASS))
    return {
        "out": str(out),
        "train": cfg.n_train,
        "test": cfg.n_test,
        "blank": sum(not c.garments for c in canvases),
        "label_counts": {CONCEPTS_BY_CLASS[i]: int(n) for i, n in enumerate(counts)},
    }


# --- CLI -------------------------------------------------------------------------------------

_FLAGS = {  # flag -> (params key, type)
    "source": str, "seed": int, "n_train": int, "n_test": int, "canvas_size": int,
    "min_items": int, "max_items": int, "blank_fraction": float,
}
