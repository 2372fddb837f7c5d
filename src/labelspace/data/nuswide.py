"""Read a dataset in the NUS-WIDE release layout into a manifest and a report of every outcome.

Layout (docs/design.md): `ConceptsList/Concepts81.txt`, `ImageList/{Train,Test}Imagelist.txt` with
lines like `actor\\0001_2124494179.jpg`, `Groundtruth/TrainTestLabels/Labels_<c>_{Train,Test}.txt`
(one 0/1 per line, aligned with the image list) and images under `Flickr/<folder>/<file>`.

The real release has faults, each handled and counted, never silently dropped: backslash paths,
CRLF line ends, trailing whitespace and blank trailing lines, a stray value in a label file
(counted with file and line, read as 0), missing, undecodable and truncated images (dropped from
the manifest, listed in the report), images with no label (kept). A label file whose length differs
from its image list is a hard error: the alignment, hence every label, would be wrong.

Label sets (`labels`): `concepts` (default) reads the 81 concepts' ground truth; `nuswide-zsl` is
NUS-WIDE's own zero-shot split (Fast0Tag, LESA, BiAM, ML-Decoder): the 925 tags of
`NUS_WID_Tags/TagList1k.txt` that are no concept are the seen labels, their targets the release's
tag matrix (`NUS_WID_Tags/{Train,Test}_Tags1k.dat`, else `AllTags1k.txt` aligned with
`ImageList/Imagelist.txt`); the concepts, with their human ground truth, are the unseen labels.
The label list is then seen + unseen, and which are unseen travels with the manifest
(`report["label_sets"]`, the parquet metadata key `labelspace.label_sets`, `read_label_sets`).

Speed: label files are parsed in bulk with numpy (the full release, 269,648 images x 81 concepts,
takes seconds); existence is checked with one directory listing per folder; decoding checks run in
a thread pool and can be skipped (`verify_images=False`).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from labelspace.choices import LABEL_SETS

CONCEPTS_FILE = Path("ConceptsList") / "Concepts81.txt"
LABELS_DIR = Path("Groundtruth") / "TrainTestLabels"
SPLITS = (("train", "TrainImagelist.txt", "Train"), ("test", "TestImagelist.txt", "Test"))
CONCEPTS_METADATA_KEY = b"labelspace.concepts"
LABEL_SETS_METADATA_KEY = b"labelspace.label_sets"
TAGS_DIR = Path("NUS_WID_Tags")


def _text_lines(path: Path) -> list[str]:
    """Stripped lines of a text file (any line ends), without the blank lines at its end."""
    lines = [line.strip() for line in path.read_bytes().decode("utf-8-sig", errors="replace").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_concepts(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    path = root / CONCEPTS_FILE
    if not path.is_file():
        others = sorted((root / CONCEPTS_FILE.parent).glob("Concepts*.txt"))
        if len(others) != 1:
            raise FileNotFoundError(f"{path} not found: is {root} a dataset in the NUS-WIDE layout?")
        path = others[0]
    concepts = [c for c in _text_lines(path) if c]
    if len(set(concepts)) != len(concepts):
        raise ValueError(f"{path} lists a concept twice")
    return concepts


def read_label_file(path: Path, n_images: int, list_path: Path) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(values (n,) bool, [(1-based line, raw value)] of lines that are neither 0 nor 1, read as 0)."""
    raw = path.read_bytes()
    # Fast paths: every line exactly "v\n" or "v\r\n" (the release as shipped, bar one file).
    for ending in (b"\n", b"\r\n"):
        stride = 1 + len(ending)
        if len(raw) == stride * n_images and all(
                raw[1 + k::stride] == ending[k:k + 1] * n_images for k in range(len(ending))):
            digits = np.frombuffer(raw, dtype=np.uint8)[::stride]
            if np.all((digits == ord("0")) | (digits == ord("1"))):
                return digits == ord("1"), []
    lines = raw.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n_images:
        raise ValueError(
            f"{path} has {len(lines)} lines but its image list {list_path} has {n_images}: the labels cannot "
            "be aligned with the images; restore the file from the release"
        )
    values = np.array(lines, dtype=bytes) if lines else np.zeros(0, dtype="S1")
    ones, zeros = values == b"1", values == b"0"
    odd = np.flatnonzero(~(ones | zeros))
    if len(odd):  # whitespace around a 0/1 is fine; anything else is a stray value
        stripped = np.char.strip(values[odd])
        ones[odd] = stripped == b"1"
        odd = odd[(stripped != b"1") & (stripped != b"0")]
    bad = [(int(i) + 1, lines[i].decode("utf-8", errors="replace").strip()) for i in odd]
    return ones, bad


def _existing_files(root: Path, folders: set[str]) -> set[str]:
    """Relative paths (forward slashes) of the files in the given image folders."""
    found = set()
    for folder in folders:
        try:
            with os.scandir(root / folder) as entries:
                found.update(f"{folder}/{e.name}" for e in entries if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            pass
    return found


def check_image(path: str | os.PathLike) -> str:
    """'ok', 'truncated' or 'undecodable': the header is verified and the pixel data decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))  # DCT scaling: all data, less work
            im.load()
        return "ok"
    except Exception as e:  # noqa: BLE001 - any failure to decode is an outcome to count, not a crash
        return "truncated" if "truncated" in str(e).lower() else "undecodable"


def _check_images(root: Path, paths: list[str], workers: int | None) -> list[str]:
    from labelspace.progress import progress

    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
        results = pool.map(check_image, [root / p for p in paths])
        return list(progress(results, total=len(paths), desc="verify images", unit="img", disable=len(paths) < 1000))


def _read_split(root: Path, concepts: list[str], split: str, list_name: str, suffix: str, report: dict) -> pd.DataFrame:
    list_path = root / "ImageList" / list_name
    if not list_path.is_file():
        raise FileNotFoundError(f"image list {list_path} not found: is {root} a dataset in the NUS-WIDE layout?")
    lines = _text_lines(list_path)
    labels = np.zeros((len(lines), len(concepts)), dtype=bool)
    for j, concept in enumerate(concepts):
        path = root / LABELS_DIR / f"Labels_{concept}_{suffix}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"no label file {path} for concept '{concept}' listed in {CONCEPTS_FILE}: "
                "restore it, or remove the concept from the concept list"
            )
        labels[:, j], bad = read_label_file(path, len(lines), list_path)
        for line, value in bad:
            report["bad_label_value_locations"].append(
                {"file": path.relative_to(root).as_posix(), "line": line, "value": value})
    blank = np.array([not line for line in lines], dtype=bool)
    report["blank_list_lines"] += int(blank.sum())
    keep = np.flatnonzero(~blank)
    for key, value in (("_list_lengths", len(lines)), ("_kept", keep),
                       ("_list_files", [line.replace("\\", "/") for line in lines])):
        report.setdefault(key, {})[split] = value  # for the tag matrices, aligned with the list's lines
    rows, cols = np.nonzero(labels[keep])
    names = np.array(concepts, dtype=object)[cols].tolist()
    bounds = np.searchsorted(rows, np.arange(len(keep) + 1)).tolist()  # row i's labels: names[bounds[i]:bounds[i+1]]
    files = [lines[i].replace("\\", "/") for i in keep]
    return pd.DataFrame({
        "image_id": [f.rsplit("/", 1)[-1].rsplit(".", 1)[0] for f in files],
        "path": ["Flickr/" + f for f in files],
        "folder": [f.rsplit("/", 1)[0] if "/" in f else "" for f in files],
        "split": split,
        "labels": [names[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
    })


def read_tag_matrix(path: Path, n_rows: int, n_tags: int) -> np.ndarray:
    """(n_rows, n_tags) bool of a release tag file: one row per line, 0/1 separated by tabs or spaces."""
    raw = path.read_bytes()
    lines = raw.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n_rows:
        raise ValueError(f"{path} has {len(lines)} rows but its image list has {n_rows}: the tags cannot be aligned")
    digits = np.frombuffer(b"".join(lines), dtype=np.uint8)
    digits = digits[(digits == ord("0")) | (digits == ord("1"))]
    if len(digits) != n_rows * n_tags:
        raise ValueError(f"{path}: {len(digits)} values, expected {n_rows} rows x {n_tags} tags (TagList1k.txt)")
    return (digits == ord("1")).reshape(n_rows, n_tags)


def _zero_shot_labels(root: Path, concepts: list[str], manifest: pd.DataFrame, report: dict) -> list[str]:
    """Seen tags + unseen concepts: the labels of NUS-WIDE's zero-shot split, set on `manifest` in place."""
    tag_list = root / TAGS_DIR / "TagList1k.txt"
    if not tag_list.is_file():
        raise FileNotFoundError(f"{tag_list} not found: labels nuswide-zsl needs the release's NUS_WID_Tags folder "
                                "(TagList1k.txt and Train_Tags1k.dat/Test_Tags1k.dat or AllTags1k.txt)")
    tags = [t for t in _text_lines(tag_list) if t]
    unseen = set(concepts)
    seen_columns = [j for j, t in enumerate(tags) if t not in unseen]
    seen = [tags[j] for j in seen_columns]
    per_split = {"train": root / TAGS_DIR / "Train_Tags1k.dat", "test": root / TAGS_DIR / "Test_Tags1k.dat"}
    matrices: dict[str, np.ndarray] = {}
    if all(p.is_file() for p in per_split.values()):
        for split, path in per_split.items():
            matrices[split] = read_tag_matrix(path, int(report["_list_lengths"][split]), len(tags))
        source = "Train_Tags1k.dat, Test_Tags1k.dat"
    else:
        all_tags = root / TAGS_DIR / "AllTags1k.txt"
        image_list = root / "ImageList" / "Imagelist.txt"
        if not all_tags.is_file() or not image_list.is_file():
            raise FileNotFoundError(f"no seen-tag targets in {root / TAGS_DIR}: put Train_Tags1k.dat and "
                                    "Test_Tags1k.dat there, or AllTags1k.txt with ImageList/Imagelist.txt")
        names = [line.replace("\\", "/") for line in _text_lines(image_list)]
        matrix = read_tag_matrix(all_tags, len(names), len(tags))
        row_of = {name: i for i, name in enumerate(names)}
        for split in per_split:
            files = report["_list_files"][split]
            missing = [f for f in files if f not in row_of]
            if missing:
                raise ValueError(f"{image_list} does not list {len(missing)} image(s) of the {split} list, e.g. {missing[0]}")
            matrices[split] = matrix[[row_of[f] for f in files]]
        source = "AllTags1k.txt by ImageList/Imagelist.txt"
    rows = np.concatenate([matrices["train"][report["_kept"]["train"]], matrices["test"][report["_kept"]["test"]]])
    seen_names = np.array(seen, dtype=object)
    sub = rows[:, seen_columns]
    manifest["labels"] = [seen_names[np.flatnonzero(r)].tolist() + labels
                          for r, labels in zip(sub, manifest["labels"], strict=True)]
    report["label_sets"] = {"name": "nuswide-zsl", "seen": seen, "unseen": list(concepts), "seen_targets": source,
                            "concepts_in_tag_list": len(tags) - len(seen)}
    return seen + list(concepts)


def read_nuswide_layout(root: str | os.PathLike, verify_images: bool = True,
                        workers: int | None = None, labels: str = "concepts") -> tuple[pd.DataFrame, dict]:
    """(manifest, report) of the dataset at `root`.

    Manifest: one row per listed image that exists (and decodes, when `verify_images`), in train-list
    then test-list order; columns image_id, path (relative to root, forward slashes), folder, split
    ('train' | 'test'), labels (list of concept names, empty for an image with no label).
    Report: `concepts` in Concepts81.txt order and the count of every outcome. Per split and in
    total, listed == ok + missing_file + undecodable + truncated + duplicate; `no_labels` counts
    kept images with no label; `bad_label_values` counts stray label values (read as 0), located
    in `bad_label_value_locations` ({file, line, value}); dropped images are named in `dropped`.
    `labels`: one of LABEL_SETS (module docstring); with `nuswide-zsl`, `concepts` is seen + unseen and
    `label_sets` says which are which.
    """
    if labels not in LABEL_SETS:
        raise ValueError(f"labels must be one of {', '.join(LABEL_SETS)}, got {labels!r}")
    root = Path(root)
    concepts = read_concepts(root)
    report: dict = {"root": str(root), "concepts": concepts, "images_verified": verify_images,
                    "blank_list_lines": 0, "bad_label_value_locations": [],
                    "label_sets": {"name": "concepts", "seen": concepts, "unseen": []}}
    manifest = pd.concat([_read_split(root, concepts, *split, report) for split in SPLITS], ignore_index=True)
    if labels == "nuswide-zsl":
        report["concepts"] = _zero_shot_labels(root, concepts, manifest, report)
    for key in ("_list_lengths", "_list_files", "_kept"):
        report.pop(key, None)

    duplicate = manifest.duplicated("path").to_numpy()
    existing = _existing_files(root / "Flickr", set(manifest["folder"]))
    status = np.where(duplicate, "duplicate",
                      np.where([p[len("Flickr/"):] in existing for p in manifest["path"]], "ok", "missing_file"))
    if verify_images:
        to_check = np.flatnonzero(status == "ok")
        status[to_check] = _check_images(root, manifest["path"].to_numpy()[to_check].tolist(), workers)
    manifest["status"] = status

    outcomes = ("ok", "missing_file", "undecodable", "truncated", "duplicate")
    report["per_split"] = {}
    for split, _, _ in SPLITS:
        rows = manifest[manifest["split"] == split]
        counts = {"listed": len(rows), **{o: int((rows["status"] == o).sum()) for o in outcomes}}
        counts["no_labels"] = int(((rows["status"] == "ok") & (rows["labels"].str.len() == 0)).sum())
        report["per_split"][split] = counts
    for key in ("listed", *outcomes, "no_labels"):
        report[key] = sum(counts[key] for counts in report["per_split"].values())
    report["bad_label_values"] = len(report["bad_label_value_locations"])
    report["dropped"] = {o: manifest.loc[manifest["status"] == o, "path"].tolist() for o in outcomes[1:]}
    manifest = manifest[manifest["status"] == "ok"].drop(columns="status").reset_index(drop=True)
    return manifest, report


def report_path(manifest_path: str | os.PathLike) -> Path:
    path = Path(manifest_path)
    return path.with_name(path.name.removesuffix(".parquet") + ".report.json")


def ingest(root: str | os.PathLike, out: str | os.PathLike, verify_images: bool = True,
           workers: int | None = None, labels: str = "concepts") -> dict:
    """Write the manifest of `root` to the parquet file `out` (the concept list in its schema metadata)
    and the report beside it (`report_path(out)`); returns the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest, report = read_nuswide_layout(root, verify_images=verify_images, workers=workers, labels=labels)
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), CONCEPTS_METADATA_KEY: json.dumps(report["concepts"]).encode(),
                LABEL_SETS_METADATA_KEY: json.dumps(report["label_sets"]).encode()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed, so a concurrent reader never sees half a file.
    for final, write in ((out, lambda p: pq.write_table(table.replace_schema_metadata(metadata), p)),
                         (report_path(out), lambda p: p.write_text(json.dumps(report, indent=1) + "\n",
                                                                   encoding="utf-8"))):
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, final)
    return report


def read_manifest(path: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """(manifest with `labels` as lists of str, concepts in the dataset's order) from `ingest`'s file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found: run `labelspace ingest --out {path}` first")
    table = pq.read_table(path)
    concepts_json = (table.schema.metadata or {}).get(CONCEPTS_METADATA_KEY)
    if concepts_json is None:
        raise ValueError(f"{path} has no concept list in its metadata: it was not written by labelspace ingest")
    manifest = table.drop_columns(["labels"]).to_pandas()
    manifest["labels"] = table.column("labels").to_pylist()
    return manifest, json.loads(concepts_json)


def summarize(report: dict) -> str:
    dropped = ", ".join(f"{report[k]} {k.replace('_', ' ')}" for k in ("missing_file", "undecodable", "truncated", "duplicate"))
    return (f"{report['ok']} of {report['listed']} listed images kept ({report['no_labels']} with no label); "
            f"dropped: {dropped}; {report['bad_label_values']} stray label value(s) read as 0; "
            f"{len(report['concepts'])} concepts")


def unseen_labels(root: str | os.PathLike, labels: str = "concepts") -> list[str]:
    """The unseen labels a label set defines for the dataset at `root`: the concepts for
    `nuswide-zsl` (NUS-WIDE's zero-shot protocol), none for `concepts`."""
    return read_concepts(root) if labels == "nuswide-zsl" else []


def read_label_sets(path: str | os.PathLike) -> dict:
    """{name, seen, unseen, ...} of `ingest`'s manifest file: which labels are unseen (zero-shot)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if LABEL_SETS_METADATA_KEY in metadata:
        return json.loads(metadata[LABEL_SETS_METADATA_KEY])
    concepts = json.loads(metadata.get(CONCEPTS_METADATA_KEY, b"[]"))
    return {"name": "concepts", "seen": concepts, "unseen": []}  # a manifest written before label sets
