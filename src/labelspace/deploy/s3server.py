"""The team's S3-compatible store: the server process, and how `team up` starts, checks and reaches it.

The process is moto's server (`python -m moto.server`) with three additions made before it serves
its first request, so that a restart looks the same to clients:

- one IAM user whose access key is the one given in the environment (moto would draw a new random
  key on every start, which would break every teammate's `dvc remote modify --local` settings);
- request signatures checked against that key (moto's INITIAL_NO_AUTH_ACTION_COUNT set to 0), so a
  wrong key gets S3's own InvalidAccessKeyId / SignatureDoesNotMatch error instead of being let in;
- the buckets named on the command line;
- presigned URLs, which MLflow's server hands its clients for downloads: moto's checks only read the
  Authorization header, so `labelspace.deploy.presigned` checks a query-signed request against the
  key and passes it on header-signed.

moto keeps every object in memory: stopping this process loses the buckets' contents.

    LABELSPACE_S3_ACCESS_KEY_ID=... LABELSPACE_S3_SECRET_ACCESS_KEY=... \\
        python -m labelspace.deploy.s3server --host 127.0.0.1 --port 19000 --bucket a --bucket b

The key is read from the environment, not argv, so that `ps` does not show it. `start_s3` runs
this module as a stack service; `s3_client` is a boto3 client signed with the stack's key.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from labelspace.deploy.processes import (
    HOST,
    START_TIMEOUT_S,
    Layout,
    http_status,
    service_env,
    spawn,
    wait_healthy,
    write_record,
)

USER_NAME = "team"
REGION = "us-east-1"
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def prepare(access_key_id: str, secret_access_key: str, buckets: list[str]) -> None:
    """Create the user, its key and the buckets in moto's in-process backends, then turn on
    signature checks. Uses moto's backends directly (moto 5.x)."""
    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    from moto.s3.models import s3_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user(region_name=REGION, user_name=USER_NAME)
    iam.put_user_policy(USER_NAME, "s3-all", json.dumps(POLICY))
    key = iam.create_access_key(USER_NAME)
    # moto draws the key at random; authentication looks it up by these two attributes.
    key.access_key_id = access_key_id
    key.secret_access_key = secret_access_key
    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket in buckets:
        s3.create_bucket(bucket, REGION)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # every request from now on must be signed by the key


# ------------------------------------------------------------------- the stack's side: start, check, reach


def s3_healthy(port: int) -> bool:
    return http_status(f"http://{HOST}:{port}/moto-api/", timeout=2)[0] == 200


def s3_client(port: int, sec: dict[str, str], **kwargs):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{HOST}:{port}", region_name=REGION,
                        aws_access_key_id=sec["s3_access_key_id"], aws_secret_access_key=sec["s3_secret_access_key"], **kwargs)


def start_s3(layout: Layout, port: int, sec: dict[str, str], buckets: dict[str, str]) -> dict[str, Any]:
    """Start this module as the stack's S3 service; returns its PID record once every bucket answers
    a signed HeadBucket."""
    marker = "labelspace.deploy.s3server"
    argv = [sys.executable, "-m", marker, "--host", HOST, "--port", str(port)]
    for bucket in buckets.values():
        argv += ["--bucket", bucket]
    env = {**service_env(), "LABELSPACE_S3_ACCESS_KEY_ID": sec["s3_access_key_id"],
           "LABELSPACE_S3_SECRET_ACCESS_KEY": sec["s3_secret_access_key"]}
    proc = spawn(layout, "s3", argv, env)
    wait_healthy("s3", lambda: s3_healthy(port), lambda: proc.poll() is None, layout.log("s3"), START_TIMEOUT_S["s3"])
    client = s3_client(port, sec)
    for bucket in buckets.values():  # a signed request: the key works and the buckets are there
        client.head_bucket(Bucket=bucket)
    return write_record(layout, "s3", proc.pid, marker, port)


# ------------------------------------------------------------------------------------ the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelspace.deploy.s3server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args(argv)
    key_id = os.environ.get("LABELSPACE_S3_ACCESS_KEY_ID")
    secret = os.environ.get("LABELSPACE_S3_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        print("s3server: set LABELSPACE_S3_ACCESS_KEY_ID and LABELSPACE_S3_SECRET_ACCESS_KEY", file=sys.stderr)
        return 2
    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    from labelspace.deploy.presigned import PresignedRequests

    prepare(key_id, secret, args.bucket)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = PresignedRequests(DomainDispatcherApplication(create_backend_app), key_id, secret, REGION)
    print(f"s3server: moto on http://{args.host}:{args.port}, buckets {', '.join(args.bucket) or '(none)'}", flush=True)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
