"""Batch inference: the served model over a folder or a list of images, into one parquet file.

`predict_to_parquet(model_uri, images, out)` is what `labelspace predict` runs:

* the model URI is resolved first: `models:/NAME@ALIAS` to the version the alias names now, and that
  version (`models:/NAME/N`) is the one loaded, so a promotion during the run changes nothing and the
  version written beside the predictions is the one that made them;
* the images are scored in chunks of `batch_size` (at most the model's `serving.max_images`), each
  chunk through the model's own `predict`, exactly as `mlflow models serve` scores a request: same
  decoding, same limits, same columns;
* every chunk is written as its own part file (written beside and renamed, so a part is whole or
  absent) in `<out>.parts/`; a run killed at any point and started again with the same model
  version, images and params skips the parts it has and goes on; anything else starts over;
* an image that cannot be scored is skipped, never fatal: missing or unreadable file, not an image,
  over a limit; each is counted by reason and listed with its message in the report;
* the result is `out` (columns image, labels, distances, decided, probabilities, uncalibrated; the
  run's record in the parquet metadata under `labelspace.predict`) and the report beside it,
  `<out stem>.report.json`: model (URI, name, version, alias, run), data version (DVC's hash of the
  tracked dataset the images are in, or a fingerprint of the files), params, counts, skipped images.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labelspace.serving.batch_inputs import BatchInput, input_data_version, inputs_fingerprint

log = logging.getLogger(__name__)

META_KEY = b"labelspace.predict"
SKIPPED_KEY = b"labelspace.skipped"
PLAN_FILE = "plan.json"
COLUMNS = ("image", "labels", "distances", "decided", "probabilities", "uncalibrated")


# ---------------------------------------------------------------- which model


@dataclass(frozen=True)
class ResolvedModel:
    uri: str  # as given
    load_uri: str  # what is loaded: pinned to a version where the URI names an alias
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    content_hash: str | None = None


def resolve_model(uri: str) -> ResolvedModel:
    """`models:/NAME@ALIAS` and `models:/NAME/N` to their registry version; any other URI as is."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    by_alias = re.fullmatch(r"models:/([^/@]+)@([^/]+)", uri)
    by_number = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
    if not (by_alias or by_number):
        return ResolvedModel(uri=uri, load_uri=uri)
    name = (by_alias or by_number).group(1)
    client = MlflowClient()
    try:
        version = (client.get_model_version_by_alias(name, by_alias.group(2)) if by_alias
                   else client.get_model_version(name, by_number.group(2)))
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        what = f"no version with alias {by_alias.group(2)!r}" if by_alias else f"no version {by_number.group(2)}"
        hint = " (promote one: labelspace promote --version N)" if by_alias else ""
        raise ValueError(f"{uri}: the registry's model {name!r} has {what}{hint}") from None
    return ResolvedModel(uri=uri, load_uri=f"models:/{name}/{version.version}", name=name,
                         version=str(version.version), alias=by_alias.group(2) if by_alias else None,
                         run_id=version.run_id, content_hash=(version.tags or {}).get("model.content_hash"))


# ---------------------------------------------------------------- the run


def report_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".parquet") + ".report.json")


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def predict_to_parquet(model_uri: str, inputs: BatchInput, out: str | os.PathLike, *, top_k: int | None = None,
                       labels: list[str] | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Score `inputs` with the model at `model_uri` into `out` (see the module docstring); returns the report."""
    import mlflow

    import labelspace.serving.pyfunc  # noqa: F401 - this process's labelspace, before the model's code path is added
    from labelspace.progress import progress

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    out = Path(out)
    started = time.time()
    model_ref = resolve_model(model_uri)
    params: dict[str, Any] = {}
    if top_k is not None:
        params["top_k"] = int(top_k)
    if labels:
        params["labels"] = list(labels)
    plan = {"model": model_ref.load_uri, "inputs": inputs_fingerprint(inputs), "params": params,
            "batch_size": batch_size}
    key = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]

    done = _finished_report(out, key)
    if done is not None:
        log.info("%s is up to date (same model version, images and params): nothing to do", out)
        return {**done, "up_to_date": True}

    model = mlflow.pyfunc.load_model(model_ref.load_uri)
    limits = getattr(model.unwrap_python_model(), "limits", None)
    chunk = min(batch_size, limits.max_images) if limits is not None else batch_size
    chunks = [inputs.ids[i : i + chunk] for i in range(0, len(inputs.ids), chunk)]
    parts = _parts_for(out, key, plan)
    resumed = sum(1 for i in range(len(chunks)) if _part(parts, i).is_file())
    if resumed:
        log.info("resuming %s: %d of %d chunks already scored", out, resumed, len(chunks))

    with progress(None, desc=f"predict {out.name}", total=len(inputs.ids), unit="img",
                  initial=sum(len(c) for i, c in enumerate(chunks) if _part(parts, i).is_file())) as bar:
        for i, ids in enumerate(chunks):
            if _part(parts, i).is_file():
                continue
            rows, skipped = _score_chunk(model, inputs.root, ids, params, limits)
            _write_part(_part(parts, i), rows, skipped)
            bar.update(len(ids))
            bar.set_postfix(skipped=len(skipped))

    report = _assemble(out, parts, len(chunks), inputs, model_ref, params, batch_size, chunk, key,
                       resumed=resumed, started=started)
    shutil.rmtree(parts, ignore_errors=True)
    return report


def _finished_report(out: Path, key: str) -> dict | None:
    report = report_path(out)
    if not (out.is_file() and report.is_file()):
        return None
    try:
        import pyarrow.parquet as pq

        meta = json.loads((pq.read_schema(out).metadata or {}).get(META_KEY, b"{}"))
        found = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if meta.get("key") == key and found.get("key") == key else None


def _parts_for(out: Path, key: str, plan: dict) -> Path:
    """The parts folder of this plan; parts of another plan (model version, images, params) go."""
    parts = parts_dir(out)
    plan_file = parts / PLAN_FILE
    if parts.is_dir():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError):
            old = None
        if old != key:
            log.info("%s holds parts of another run (model, images or params changed): starting over", parts)
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        _atomic_write(plan_file, lambda p: p.write_text(json.dumps({"key": key, **plan}, indent=1) + "\n",
                                                        encoding="utf-8"))
    return parts


def _part(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.parquet"


def _schema():
    import pyarrow as pa

    strings, doubles = pa.list_(pa.string()), pa.list_(pa.float64())
    return pa.schema([("image", pa.string()), ("labels", strings), ("distances", doubles), ("decided", strings),
                      ("probabilities", doubles), ("uncalibrated", strings)])


def _atomic_write(final: Path, write) -> None:
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, final)


def _write_part(path: Path, rows: list[dict], skipped: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema()).replace_schema_metadata(
        {SKIPPED_KEY: json.dumps(skipped).encode()})
    _atomic_write(path, lambda p: pq.write_table(table, p))


def _score_chunk(model, root: Path, ids: list[str], params: dict, limits) -> tuple[list[dict], list[dict]]:
    """Rows of the chunk's scored images and the list of those skipped, with reasons."""
    skipped: list[dict] = []
    kept, values = [], []
    cap = getattr(limits, "max_image_bytes", None)
    for rel in ids:
        path = root / rel
        try:
            size = path.stat().st_size
            if cap is not None and size > cap:
                skipped.append({"image": rel, "reason": "over_limit",
                                "message": f"the file is {size} bytes, over the limit of {cap} bytes per image"})
                continue
            data = path.read_bytes()
        except OSError as e:
            skipped.append({"image": rel, "reason": "unreadable", "message": e.strerror or type(e).__name__})
            continue
        kept.append(rel)
        values.append(base64.b64encode(data).decode("ascii"))
    return _score(model, kept, values, params, skipped), skipped


def _score(model, ids: list[str], values: list[str], params: dict, skipped: list[dict]) -> list[dict]:
    """Score the images through the model's predict. An image the model refuses (its error names the
    row) is skipped and the rest scored again; a request-wide refusal (the request's pixel budget)
    splits the request in two, down to single images."""
    import pandas as pd

    ids, values = list(ids), list(values)
    while ids:
        try:
            frame = model.predict(pd.DataFrame({"image": values}), params=params or None)
        except Exception as e:  # the model's ServingError (from the model's copy of labelspace: by its fields)
            status, row = getattr(e, "status", None), getattr(e, "row", None)
            if status is None:
                raise
            if row is not None and 0 <= row < len(ids):
                skipped.append(_refused(ids[row], e, status))
                del ids[row], values[row]
                continue
            if len(ids) == 1:
                skipped.append(_refused(ids[0], e, status))
                return []
            half = len(ids) // 2
            return (_score(model, ids[:half], values[:half], params, skipped)
                    + _score(model, ids[half:], values[half:], params, skipped))
        records = frame.to_dict("records")
        return [{"image": rel, **{c: list(r[c]) for c in COLUMNS[1:]}} for rel, r in zip(ids, records, strict=True)]
    return []


def _refused(rel: str, error: Exception, status: int) -> dict[str, str]:
    message = re.sub(r"^row \d+: ", "", str(getattr(error, "message", error)))  # the row of a chunk means nothing here
    return {"image": rel, "reason": "over_limit" if status == 413 else "invalid_image", "message": message}


def _assemble(out: Path, parts: Path, n_chunks: int, inputs: BatchInput, model_ref: ResolvedModel, params: dict,
              batch_size: int, chunk: int, key: str, *, resumed: int, started: float) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, skipped = [], list(inputs.skipped)
    for i in range(n_chunks):
        table = pq.read_table(_part(parts, i))
        skipped += json.loads((table.schema.metadata or {}).get(SKIPPED_KEY, b"[]"))
        tables.append(table.replace_schema_metadata(None))
    table = pa.concat_tables(tables) if tables else _schema().empty_table()
    by_reason: dict[str, int] = {}
    for item in skipped:
        by_reason[item["reason"]] = by_reason.get(item["reason"], 0) + 1
    report = {
        "key": key,
        "output": str(out),
        "model": {k: v for k, v in asdict(model_ref).items() if v is not None},
        "data": {"source": inputs.source, "root": str(inputs.root), **input_data_version(inputs.root),
                 "inputs_fingerprint": inputs_fingerprint(inputs)},
        "params": {**params, "batch_size": batch_size, "chunk_size": chunk},
        "listed": inputs.listed,
        "predicted": table.num_rows,
        "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "ignored_files": inputs.ignored_files,
        "chunks": n_chunks,
        "chunks_resumed": resumed,
        "elapsed_s": round(time.time() - started, 2),
        "skipped_images": skipped,
    }
    meta = {k: v for k, v in report.items() if k not in ("skipped_images", "elapsed_s")}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, lambda p: pq.write_table(table, p))
    _atomic_write(report_path(out), lambda p: p.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8"))
    return report
