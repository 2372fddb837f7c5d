"""A real-tag dataset in the NUS-WIDE layout, built offline from an installed package (docs/datasets.md).

Two sources, npm packages pinned by scripts/fetch_datasets.sh. `openmoji`: the package `openmoji`,
whose `data/openmoji.json` gives every emoji the keywords people wrote for it (`tags`: Unicode CLDR's
English keywords; `openmoji_tags`: the OpenMoji contributors' own) and whose `color/svg/` holds the
artwork. `tabler`: the package `@tabler/icons`, whose `icons.json` gives every icon the search tags
its contributors wrote and one of about 40 categories (taken as one more tag, lower-cased), and whose
`icons/outline/` holds the stroke drawings (`stroke="currentColor"`, which librsvg draws black). Each
emoji or icon is one image, rendered to a `image_size` px PNG on white (labelspace.data.svg).

The labels are tags, chosen by one rule from their frequency: the `n_concepts` tags carried by the
most images (ties alphabetical) that are one lower-case word of at least 3 letters (a-z), not a stop
word, with a vector in the word-vector file the pipeline reads. So they are noisy (written by
people, for search, not for vision) and long-tailed; every tag the rule skips is counted by reason
(multi-word, not a word, stop word, no vector), and an image whose tags hit no concept is kept with
no label. Variants are left out unless `variants`: OpenMoji's skin-tone variants (the same drawing
with another skin colour, the base emoji's tags) and Tabler's `-off` icons (the base icon struck
through, its tags plus `off`, `disabled` ...); Tabler's filled icons, which redraw outline ones, are
never read. The seeded train/test split is drawn per base image, so a variant never sits in the other
split from its base. `max_images` keeps a seeded draw of that many base images (with their variants)
before the concepts are chosen. Same package, vectors and parameters give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

OPENMOJI_VERSION = "17.0.0"
TABLER_VERSION = "3.54.0"
PACKAGE_DIRS = {"openmoji": Path("data") / "packages" / f"openmoji-{OPENMOJI_VERSION}",  # under the project root
                "tabler": Path("data") / "packages" / f"tabler-icons-{TABLER_VERSION}"}
FETCH_COMMAND = "make datasets (or bash scripts/fetch_datasets.sh)"
WORD = re.compile(r"[a-z]{3,}")
# Function words that are tags in CLDR ("not", "off", "the" ...): words, but no picture of anything.
STOP_WORDS = frozenset("""
and are but can for from has her him his how its not off one out own she the they this too two
was what when who why with you your yes
""".split())


@dataclass(frozen=True)
class TaggedImage:
    key: str          # unique in the source (OpenMoji: the hexcode; Tabler: the icon's name)
    folder: str       # the Flickr/<folder> it is written to (OpenMoji: its group; Tabler: its category)
    tags: tuple[str, ...]  # normalised, unique, sorted
    svg: Path
    base: str         # key of the image it is a variant of (itself when none): the unit of the split


def _split_tags(*fields: str) -> tuple[str, ...]:
    tags = {t.strip().lower() for text in fields for t in (text or "").split(",")}
    return tuple(sorted(t for t in tags if t))


def read_openmoji(package: str | os.PathLike, skin_tones: bool = False) -> list[TaggedImage]:
    """Every emoji of the installed package in its own order (skin-tone variants only when asked)."""
    package = Path(package)
    meta = package / "data" / "openmoji.json"
    if not meta.is_file():
        raise FileNotFoundError(
            f"OpenMoji package not found at {package} (no data/openmoji.json): install it with {FETCH_COMMAND}, "
            "or pass --package DIR naming an unpacked openmoji npm package")
    entries = json.loads(meta.read_text(encoding="utf-8"))
    by_code = {e["hexcode"]: e for e in entries}
    images = []
    for e in sorted(entries, key=lambda e: (e.get("order") or 0, e["hexcode"])):
        variant = bool(e.get("skintone"))
        if variant and not skin_tones:
            continue
        base = e.get("skintone_base_hexcode") or e["hexcode"]
        source = by_code.get(base, e) if variant else e  # variants carry no tags of their own
        images.append(TaggedImage(key=e["hexcode"], folder=e["group"] or "other",
                                  tags=_split_tags(source.get("tags", ""), source.get("openmoji_tags", "")),
                                  svg=package / "color" / "svg" / f"{e['hexcode']}.svg", base=base))
    return images


def read_tabler(package: str | os.PathLike, off_variants: bool = False) -> list[TaggedImage]:
    """Every outline icon of the installed @tabler/icons package, by name (`-off` variants only when asked).

    An icon's labels are its `tags` (numbers among them read as text) and its category, lower-cased:
    many tags are the icon's own words, and without the category a third of the icons would hit no
    concept (docs/datasets.md). An icon `X-off` is a variant of `X`
    when `X` is an icon too (`hand-off` alone is no variant); filled icons are never read."""
    package = Path(package)
    meta = package / "icons.json"
    if not meta.is_file():
        raise FileNotFoundError(
            f"Tabler icons package not found at {package} (no icons.json): install it with {FETCH_COMMAND}, "
            "or pass --package DIR naming an unpacked @tabler/icons npm package")
    entries = json.loads(meta.read_text(encoding="utf-8"))
    images = []
    for name in sorted(entries):
        e = entries[name]
        if "outline" not in (e.get("styles") or {"outline": {}}):
            continue
        base = name[: -len("-off")] if name.endswith("-off") and name[: -len("-off")] in entries else name
        if base != name and not off_variants:
            continue
        category = str(e.get("category") or "").strip()
        folder = re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-") or "other"
        tags = _split_tags(*(str(t).replace(",", " ") for t in e.get("tags") or []), category)
        images.append(TaggedImage(key=name, folder=folder, tags=tags,
                                  svg=package / "icons" / "outline" / f"{name}.svg", base=base))
    return images


# source -> reader(package, variants): the images of an unpacked package, its variants only when asked.
SOURCES: dict[str, Callable[[str | os.PathLike, bool], list[TaggedImage]]] = {
    "openmoji": lambda package, variants: read_openmoji(package, skin_tones=variants),
    "tabler": lambda package, variants: read_tabler(package, off_variants=variants),
}


def skip_reason(tag: str) -> str | None:
    """Why the concept rule never picks `tag` whatever the vectors hold (None: a candidate)."""
    if " " in tag:
        return "multi_word"
    if not WORD.fullmatch(tag):
        return "not_a_word"
    return "stop_word" if tag in STOP_WORDS else None


def choose_concepts(counts: Counter, has_vector: Callable[[str], bool], n: int) -> tuple[list[str], dict]:
    """(the concepts, sorted; the rule's report): the `n` most frequent candidate tags with a vector."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    chosen: list[str] = []
    reasons: dict[str, list[tuple[str, int]]] = {r: [] for r in ("multi_word", "not_a_word", "stop_word", "no_vector")}
    for tag, count in ranked:
        reason = skip_reason(tag)
        if reason is None and not has_vector(tag):
            reason = "no_vector"
        if reason is not None:
            reasons[reason].append((tag, count))
        elif len(chosen) < n:
            chosen.append(tag)
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} tags qualify as concepts, {n} asked for: lower n_concepts")
    cutoff = counts[chosen[-1]]
    report = {
        "rule": f"the {n} tags on the most images (ties alphabetical) that are one a-z word of 3+ letters, "
                "not a stop word, with a word vector",
        "distinct_tags": len(counts),
        "concept_cutoff_images": cutoff,
        "skipped": {r: {"distinct_tags": len(items), "tag_uses": sum(c for _, c in items),
                        "at_or_above_cutoff": len([t for t, c in items if c >= cutoff]),
                        "most_frequent": [[t, c] for t, c in items[:15]]}
                    for r, items in reasons.items()},
    }
    return sorted(chosen), report


def split_keys(bases: list[str], seed: int, test_fraction: float) -> set[str]:
    """The bases whose images form the test split: a seeded draw of round(test_fraction x bases)."""
    unique = sorted(set(bases))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[: round(test_fraction * len(unique))]}


def label_statistics(manifest: pd.DataFrame, concepts: list[str]) -> dict:
    """Images per split, labels per image, the head and the tail of the concepts, the unlabelled share."""
    n_labels = manifest["labels"].map(len).to_numpy()
    counts = Counter(label for labels in manifest["labels"] for label in labels)
    per_concept = sorted(((counts.get(c, 0), c) for c in concepts), key=lambda x: (-x[0], x[1]))
    images = len(manifest)
    median = float(np.median([n for n, _ in per_concept])) if per_concept else 0.0
    top_n, top = per_concept[0] if per_concept else (0, None)
    labelled = n_labels > 0
    return {
        "images": images,
        "per_split": {s: int((manifest["split"] == s).sum()) for s in ("train", "test")},
        "concepts": len(concepts),
        "unlabelled": int((~labelled).sum()),
        "unlabelled_share": round(float((~labelled).mean()), 4) if images else 0.0,
        "labels_per_image": round(float(n_labels.mean()), 3) if images else 0.0,
        "labels_per_labelled_image": round(float(n_labels[labelled].mean()), 3) if labelled.any() else 0.0,
        "max_labels_per_image": int(n_labels.max()) if images else 0,
        "most_frequent_concept": top,
        "most_frequent_images": int(top_n),
        "most_frequent_share": round(top_n / images, 4) if images else 0.0,
        "median_concept_images": median,
        "head_to_median": round(top_n / median, 2) if median else None,
        "least_frequent": [[c, int(n)] for n, c in per_concept[-5:]],
        "images_per_concept": {c: int(n) for n, c in per_concept},
    }


def format_statistics(stats: dict) -> str:
    return (f"{stats['images']} images ({stats['per_split']['train']} train, {stats['per_split']['test']} test), "
            f"{stats['concepts']} concepts; {stats['labels_per_image']} labels per image "
            f"({stats['labels_per_labelled_image']} per labelled image, at most {stats['max_labels_per_image']}); "
            f"most frequent concept '{stats['most_frequent_concept']}' on {stats['most_frequent_images']} images "
            f"({100 * stats['most_frequent_share']:.1f}%), median concept {stats['median_concept_images']:g} images "
            f"(head/median {stats['head_to_median']}); unlabelled {stats['unlabelled']} "
            f"({100 * stats['unlabelled_share']:.1f}%)")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def _render_png(svg: Path, size: int) -> bytes:
    import io

    from PIL import Image

    from labelspace.data.svg import render_svg

    buf = io.BytesIO()
    Image.fromarray(render_svg(svg.read_bytes(), size)).save(buf, format="PNG")  # no metadata: same bytes
    return buf.getvalue()


def write_layout(out: Path, rows: list[tuple[str, str, TaggedImage]], concepts: list[str], image_size: int,
                 workers: int | None = None) -> None:
    """rows: (split, 'folder\\file', image), in list order. Writes images, lists, labels and raw tags."""
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:  # ctypes frees the GIL
        pngs = list(pool.map(lambda row: _render_png(row[2].svg, image_size), rows))
    for (_, name, _), png in zip(rows, pngs, strict=True):
        path = out / "Flickr" / name.replace("\\", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    _write_lines(out / "ConceptsList" / "Concepts81.txt", concepts)  # the reader's file name, whatever the count
    _write_lines(out / "ImageList" / "Imagelist.txt", [name for _, name, _ in rows])
    for split, list_name, suffix in (("train", "TrainImagelist.txt", "Train"), ("test", "TestImagelist.txt", "Test")):
        chosen = [(name, image) for s, name, image in rows if s == split]
        _write_lines(out / "ImageList" / list_name, [name for name, _ in chosen])
        for concept in concepts:
            _write_lines(out / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{suffix}.txt",
                         ["1" if concept in image.tags else "0" for _, image in chosen])
    # Every image's tags as people wrote them (after lower-casing), in Imagelist.txt order.
    _write_lines(out / "Tags" / "AllTags.txt", [f"{name}\t{', '.join(image.tags)}" for _, name, image in rows])


def vector_lookup(vectors: str | os.PathLike) -> Callable[[str], bool]:
    """has_vector(word) under the project's policy (labelspace.data.word_vectors) for a word2vec file."""
    from labelspace.data.word_vectors import load_word_vectors, resolve_label

    kv = load_word_vectors(vectors)
    return lambda word: resolve_label(kv, word)[0] is not None


def sample_bases(images: list[TaggedImage], max_images: int | None, seed: int) -> list[TaggedImage]:
    """The images of a seeded draw of `max_images` bases (all when None or at least as many), in list order."""
    bases = sorted({im.base for im in images})
    if max_images is None or max_images >= len(bases):
        return images
    order = np.random.default_rng([seed, 1]).permutation(len(bases))  # not the split's draw
    kept = {bases[i] for i in order[:max_images]}
    return [im for im in images if im.base in kept]


def build_tag_dataset(out: str | os.PathLike, *, source: str = "openmoji", package: str | os.PathLike,
                      has_vector: Callable[[str], bool], n_concepts: int = 80, image_size: int = 64, seed: int = 0,
                      test_fraction: float = 0.2, variants: bool = False,
                      max_images: int | None = None, workers: int | None = None) -> dict:
    """Write the dataset under `out` (replacing an earlier build); returns its report (rule, counts, statistics)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: one of {', '.join(SOURCES)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n_concepts < 1 or image_size < 8:
        raise ValueError("n_concepts must be at least 1 and image_size at least 8 px")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1 (or None: every image), got {max_images}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "ConceptsList").is_dir():
        raise ValueError(f"{out} exists and is not a NUS-WIDE-layout dataset: choose another --out or empty it")
    images = SOURCES[source](package, variants)
    missing = [im for im in images if not im.svg.is_file()]
    images = [im for im in images if im.svg.is_file()]
    available = len(images)
    images = sample_bases(images, max_images, seed)
    counts = Counter(tag for im in images for tag in im.tags)
    concepts, rule = choose_concepts(counts, has_vector, n_concepts)
    test = split_keys([im.base for im in images], seed, test_fraction)
    serials: Counter = Counter()
    rows = []
    for split in ("train", "test"):
        for im in (im for im in images if (im.base in test) == (split == "test")):
            serials[im.folder] += 1
            rows.append((split, f"{im.folder}\\{serials[im.folder]:04d}_{im.key}.png", im))
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_layout(partial, rows, concepts, image_size, workers)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    manifest = pd.DataFrame({"split": [s for s, _, _ in rows],
                             "labels": [[c for c in concepts if c in im.tags] for _, _, im in rows]})
    return {"source": source, "package": str(package), "n_concepts": n_concepts, "image_size": image_size,
            "seed": seed, "test_fraction": test_fraction, "variants": variants, "max_images": max_images,
            "images_available": available, "concepts": concepts,
            "images_without_tags": sum(not im.tags for im in images), "missing_artwork": [im.key for im in missing],
            "concept_rule": rule, "statistics": label_statistics(manifest, concepts)}
