"""Decoded images in fixed-size shards, for datasets too large for one array (NUS-WIDE at 224 px is
about 40 GB): `shard-00000.npy` ... each (n, S, S, 3) uint8 of `shard_size` consecutive manifest
rows, and `index.json` describing them.

Writing is resumable: a shard is decoded into a per-process temporary file and renamed when
complete, then a small `shard-00000.json` records what it was built from (manifest hash, rows,
image size); a rerun after a kill skips every shard whose record matches and rebuilds the rest.
`index.json` is written last and marks the whole set complete, so DVC can track the folder.

`ShardedImages` reads them back as one array-like of shape (N, S, S, 3): `images[rows]` gathers any
rows (a batch of a distributed sampler's shard, a validation split) with positioned reads
(`os.preadv`, one per run of consecutive rows) straight into the batch, so a process reads only the
images it asks for, its memory holds only the batch (the kernel's page cache, shared by every rank
on a host, holds the rest), and at most `max_open` shard files stay open. Positioned reads carry no
file position, so ranks and forked loader workers can share the open files. Earlier the shards were
memory-mapped with at most 8 mapped at once: a random batch of NUS-WIDE's 66 shards of 4,096 then
re-opened most of them, and the loader ran at 816 images/s against 73,401 for one mapped array
(benchmarks/bench_shards.py).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from labelspace.data.preprocess import RESIZE, decode_resized

INDEX_FILE = "index.json"


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_shards(paths: list[str | os.PathLike], image_size: int, out_dir: str | os.PathLike, *,
                 shard_size: int, source_hash: str, workers: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Decode the images at `paths` (manifest row order) into shards of `shard_size` rows under
    `out_dir`; returns the index. `source_hash` identifies what the paths came from (the manifest's
    hash): shards recorded with another one are rebuilt."""
    from labelspace.progress import progress as progress_bar

    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1 image, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # incomplete until the new index is written
    for partial in out.glob(".shard-*.partial.npy"):  # left by a killed writer
        if not _pid_alive(int(partial.name.split(".")[2])):
            partial.unlink(missing_ok=True)
    n = len(paths)
    starts = list(range(0, n, shard_size))
    shards, built, reused = [], 0, 0
    pool = ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1))
    bar = progress_bar(None, total=n, desc=f"shards of {shard_size} at {image_size}px", unit="img",
                       disable=not progress)
    try:
        for i, start in enumerate(starts):
            rows = min(shard_size, n - start)
            wanted = {"source": source_hash, "start": start, "rows": rows, "image_size": image_size, "resize": RESIZE}
            name = _shard_name(i)
            if _read_json(out / f"{name}.json") == wanted and (out / f"{name}.npy").is_file():
                reused += 1
            else:
                (out / f"{name}.json").unlink(missing_ok=True)
                partial = out / f".{name}.{os.getpid()}.partial.npy"
                array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                                  shape=(rows, image_size, image_size, 3))

                def fill(j: int, array=array, start=start) -> None:
                    array[j] = decode_resized(paths[start + j], image_size)

                list(pool.map(fill, range(rows)))
                array.flush()
                del array
                partial.replace(out / f"{name}.npy")
                _write_json(out / f"{name}.json", wanted)
                built += 1
            shards.append({"file": f"{name}.npy", "start": start, "rows": rows})
            bar.update(rows)
    finally:
        bar.close()
        pool.shutdown()
    index = {"n": n, "image_size": image_size, "shard_size": shard_size, "source": source_hash,
             "resize": RESIZE, "shards": shards}
    _write_json(out / INDEX_FILE, index)
    for stale in out.glob("shard-*.npy"):  # shards of an earlier, longer manifest
        if stale.name not in {s["file"] for s in shards}:
            stale.unlink()
            stale.with_suffix(".json").unlink(missing_ok=True)
    return {**index, "built": built, "reused": reused}


class ShardedImages:
    """The shards of `write_shards` as one read-only (N, S, S, 3) uint8 array-like."""

    def __init__(self, folder: str | os.PathLike, max_open: int = 256) -> None:
        self.folder = Path(folder)
        self.max_open = max_open  # shard files kept open (descriptors only: no memory)
        index = _read_json(self.folder / INDEX_FILE)
        if index is None:
            raise FileNotFoundError(f"no complete shards in {self.folder} (no {INDEX_FILE}): build them again")
        self.index = index
        size = index["image_size"]
        self.shape = (index["n"], size, size, 3)
        self.dtype = np.dtype(np.uint8)
        self.shard_size = index["shard_size"]
        self.row_bytes = size * size * 3
        self._open: OrderedDict[int, tuple[int, int]] = OrderedDict()  # shard -> (fd, offset of row 0)

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:  # a pickled copy (a DataLoader worker, a rank) opens its own files
        return {**self.__dict__, "_open": OrderedDict()}

    def __del__(self) -> None:
        for fd, _ in getattr(self, "_open", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _shard(self, i: int) -> tuple[int, int]:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        info = self.index["shards"][i]
        path = self.folder / info["file"]
        with open(path, "rb") as f:  # the .npy header: where row 0 starts, and that the file is what the index says
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if shape != (info["rows"], *self.shape[1:]) or fortran or dtype != self.dtype:
            raise ValueError(f"{path} holds {shape} {dtype}, not the {info['rows']} rows {INDEX_FILE} describes: "
                             "build the shards again")
        self._open[i] = (os.open(path, os.O_RDONLY), offset)
        while len(self._open) > self.max_open:  # least recently read first
            os.close(self._open.popitem(last=False)[1][0])
        return self._open[i]

    def _read(self, out: np.ndarray, rows: np.ndarray) -> None:
        """Fill out[j] with image rows[j] (rows sorted or not): one positioned read per run of
        consecutive rows within a shard."""
        if not len(rows):
            return
        shard_of, within = np.divmod(rows, self.shard_size)
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(shard_of) != 0)) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [len(rows)])).tolist()
        view = memoryview(out.reshape(-1)).cast("B")
        size = self.row_bytes
        for j, k, shard, first in zip(starts, ends, shard_of[starts].tolist(), within[starts].tolist(), strict=True):
            fd, offset = self._shard(shard)
            got = os.preadv(fd, [view[j * size:k * size]], offset + first * size)
            if got != (k - j) * size:
                raise OSError(f"{self.folder}/{self.index['shards'][shard]['file']} is truncated: "
                              f"read {got} of {(k - j) * size} bytes")

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} images")
            out = np.empty((1, *self.shape[1:]), dtype=np.uint8)
            self._read(out, np.array([row]))
            return out[0]
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if rows.ndim != 1:
            raise IndexError("index with an integer, a slice or a 1-D array of rows")
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} images")
        rows = np.where(rows < 0, rows + len(self), rows)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        self._read(out, rows)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[np.arange(len(self))]
        return whole if dtype is None else whole.astype(dtype)
