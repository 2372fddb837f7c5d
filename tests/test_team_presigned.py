"""labelspace.deploy.presigned without a store: presigned URLs made by boto3 (as MLflow's server
makes them) checked against the key, then handed on signed in the header; the rest refused with
S3's error codes. The round trip through moto and MLflow is in test_team.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

botocore = pytest.importorskip("botocore")
boto3 = pytest.importorskip("boto3")

from botocore.config import Config  # noqa: E402

from labelspace.deploy.presigned import PresignedRequests  # noqa: E402

KEY_ID, SECRET, REGION = "AKIAEXAMPLEEXAMPLE12", "s" * 40, "us-east-1"
ENDPOINT = "http://127.0.0.1:19000"


def _presign(method="get_object", key="a dir/ü+x (1).txt", secret=SECRET, key_id=KEY_ID, expires=300, v4=True,
             **params) -> str:
    client = boto3.client("s3", endpoint_url=ENDPOINT, region_name=REGION, aws_access_key_id=key_id,
                          aws_secret_access_key=secret, config=Config(signature_version="s3v4") if v4 else None)
    return client.generate_presigned_url(method, Params={"Bucket": "mlflow-artifacts", "Key": key, **params},
                                         ExpiresIn=expires)


def _call(url: str, method: str = "GET", now=None, headers=None):
    """(status, body, the environ the store behind the middleware got) for a request to `url`."""
    parts = urlsplit(url)
    environ = {"REQUEST_METHOD": method, "QUERY_STRING": parts.query, "HTTP_HOST": parts.netloc,
               "RAW_URI": parts.path + (f"?{parts.query}" if parts.query else ""), "PATH_INFO": parts.path}
    environ.update(headers or {})
    seen, answer = {}, {}

    def store(env, start_response):
        seen.update(env)
        start_response("200 OK", [])
        return [b"object"]

    def start_response(status, headers):
        answer["status"] = int(status.split()[0])

    kwargs = {"now": now} if now else {}
    body = b"".join(PresignedRequests(store, KEY_ID, SECRET, REGION, **kwargs)(environ, start_response))
    return answer["status"], body.decode(), seen


def test_a_valid_presigned_url_reaches_the_store_signed_in_its_header():
    status, body, seen = _call(_presign(ResponseContentDisposition='attachment; filename="x.txt"'))
    assert (status, body) == (200, "object")
    assert seen["QUERY_STRING"].startswith("response-content-disposition=") and "X-Amz-" not in seen["QUERY_STRING"]
    assert seen["RAW_URI"] == "/mlflow-artifacts/a%20dir/%C3%BC%2Bx%20%281%29.txt?" + seen["QUERY_STRING"]
    auth = seen["HTTP_AUTHORIZATION"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/") and "SignedHeaders=host;x-amz-content-sha256;x-amz-date" in auth
    assert seen["HTTP_X_AMZ_CONTENT_SHA256"] == "UNSIGNED-PAYLOAD"


def test_a_presigned_put_is_checked_the_same_way():
    assert _call(_presign("put_object"), method="PUT")[0] == 200
    assert _call(_presign("put_object"), method="GET")[0] == 403  # signed for another method


def test_requests_without_a_query_signature_pass_untouched():
    headers = {"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=x"}
    status, _, seen = _call(f"{ENDPOINT}/mlflow-artifacts/k?list-type=2", headers=headers)
    assert status == 200 and seen["HTTP_AUTHORIZATION"] == headers["HTTP_AUTHORIZATION"]
    assert seen["QUERY_STRING"] == "list-type=2"


@pytest.mark.parametrize("url, code", [
    (lambda: _presign()[:-4] + "0000", "SignatureDoesNotMatch"),
    (lambda: _presign(secret="x" * 40), "SignatureDoesNotMatch"),
    (lambda: _presign(key_id="AKIAOTHEROTHEROTHER1"), "InvalidAccessKeyId"),
    (lambda: _presign().replace("a%20dir", "b%20dir"), "SignatureDoesNotMatch"),
    (lambda: _presign().replace("X-Amz-Expires=300", "X-Amz-Expires=3000"), "SignatureDoesNotMatch"),
    (lambda: _presign(v4=False), "AccessDenied"),
])
def test_a_bad_presigned_url_gets_s3s_403(url, code):
    status, body, seen = _call(url())
    assert status == 403 and f"<Code>{code}</Code>" in body and seen == {}


def test_an_expired_or_future_presigned_url_is_refused():
    url = _presign(expires=60)
    later = lambda: datetime.now(UTC) + timedelta(seconds=61)  # noqa: E731
    status, body, _ = _call(url, now=later)
    assert status == 403 and "Request has expired" in body
    earlier = lambda: datetime.now(UTC) - timedelta(minutes=20)  # noqa: E731
    status, body, _ = _call(url, now=earlier)
    assert status == 403 and "not yet valid" in body


def test_generated_secrets_never_look_like_command_line_options():
    """`dvc remote modify --local team secret_access_key VALUE` reads a leading '-' as an option."""
    from labelspace.deploy.team import _token

    tokens = [_token() for _ in range(2000)]  # a urlsafe token starts with '-' once in 64
    assert not [t for t in tokens if t.startswith("-")] and len(set(tokens)) == len(tokens)
