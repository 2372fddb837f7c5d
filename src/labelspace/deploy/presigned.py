"""Presigned URLs for the team's S3 store, which moto's signature checks do not understand.

MLflow's server (3.x, `--serve-artifacts` on S3) answers a client's artifact download with a
presigned URL of the bucket (`GET /api/2.0/mlflow-artifacts/presigned/...`), and the client fetches
the file from the store itself. moto checks a signature only in the `Authorization` header: a
request signed in its query string fails its check with a KeyError, a 500, which MLflow's client
retries for minutes. So `mlflow.pyfunc.load_model`, `mlflow models serve` and every download from
the team server would hang.

`PresignedRequests` is WSGI middleware in front of moto. A request whose query carries
`X-Amz-Signature` is checked here against the store's one key, as S3 checks it: algorithm, access
key id, credential scope, date and expiry, and the SigV4 signature over method, path, query and
signed headers. A request that passes is handed on without the `X-Amz-*` parameters, signed in its
`Authorization` header with the same key, so moto's own checks and policies apply unchanged; one that
fails gets S3's 403 with S3's error code. Every other request passes through untouched.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_EXPIRES_S = 7 * 24 * 3600  # S3's limit for SigV4 presigned URLs
CLOCK_SKEW = timedelta(minutes=15)


def _environ_header(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def _raw_path(environ: dict[str, Any]) -> str:
    """The request path as the client sent it (still percent-encoded): what it signed."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if raw:
        path = urlsplit(raw).path if "://" in raw.split("?", 1)[0] else raw.split("?", 1)[0]
    else:
        path = quote(environ.get("PATH_INFO", "/"), safe="/~")
    return path if path.startswith("/") else "/" + path


def _s3_error(start_response: Callable, code: str, message: str) -> Iterable[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error>").encode()
    start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


class PresignedRequests:
    """WSGI middleware: presigned requests checked against one key, then passed on header-signed."""

    def __init__(self, app: Callable, access_key_id: str, secret_access_key: str, region: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        from botocore.credentials import Credentials

        self.app = app
        self.access_key_id = access_key_id
        self.credentials = Credentials(access_key_id, secret_access_key)
        self.region = region
        self.now = now

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        pairs = [pair.partition("=")[::2] for pair in environ.get("QUERY_STRING", "").split("&") if pair]
        names = {unquote(key) for key, _ in pairs}
        if {"AWSAccessKeyId", "Signature"} <= names and _environ_header("Authorization") not in environ:  # SigV2
            return _s3_error(start_response, "AccessDenied", f"presigned URLs must use SigV4 ({ALGORITHM}); "
                             "create them with botocore Config(signature_version='s3v4')")
        if "X-Amz-Signature" not in names:
            return self.app(environ, start_response)
        problem = self.check(environ, pairs)
        if problem is not None:
            return _s3_error(start_response, *problem)
        self._sign_in_header(environ, [(k, v) for k, v in pairs if not unquote(k).startswith("X-Amz-")])
        return self.app(environ, start_response)

    def check(self, environ: dict[str, Any], pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
        """None if the query-signed request is valid now, else (S3 error code, message)."""
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        params = {unquote(k): unquote(v) for k, v in pairs}
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            return "AuthorizationQueryParametersError", f"X-Amz-Algorithm must be {ALGORITHM}"
        key_id, _, scope = params.get("X-Amz-Credential", "").partition("/")
        if key_id != self.access_key_id:
            return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
        date = params.get("X-Amz-Date", "")
        try:
            signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            expires = int(params.get("X-Amz-Expires", ""))
        except ValueError:
            return "AuthorizationQueryParametersError", "X-Amz-Date or X-Amz-Expires is missing or malformed"
        if scope != f"{date[:8]}/{self.region}/s3/aws4_request":
            return "AuthorizationQueryParametersError", f"credential scope {scope!r} is not DATE/{self.region}/s3/aws4_request"
        if not 0 < expires <= MAX_EXPIRES_S:
            return "AuthorizationQueryParametersError", f"X-Amz-Expires must be between 1 and {MAX_EXPIRES_S} seconds"
        now = self.now()
        if now > signed_at + timedelta(seconds=expires):
            return "AccessDenied", "Request has expired"
        if signed_at > now + CLOCK_SKEW:
            return "AccessDenied", "Request is not yet valid"
        host = environ.get("HTTP_HOST", "")
        headers = {"host": host}
        for name in params.get("X-Amz-SignedHeaders", "host").split(";"):
            if name and name != "host":
                headers[name] = environ.get(_environ_header(name), "")
        query = "&".join(f"{k}={v}" for k, v in pairs if unquote(k) != "X-Amz-Signature")
        request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"), url=f"http://{host}{_raw_path(environ)}?{query}",
                             headers=headers)
        request.context["timestamp"] = date
        auth = S3SigV4QueryAuth(self.credentials, "s3", self.region, expires=expires)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if not hmac.compare_digest(expected, params.get("X-Amz-Signature", "")):
            return ("SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided.")
        return None

    def _sign_in_header(self, environ: dict[str, Any], others: list[tuple[str, str]]) -> None:
        from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        class Signer(S3SigV4Auth):
            def payload(self, request):  # as the presigned request: the body is not part of the signature
                return UNSIGNED_PAYLOAD

        query = "&".join(f"{k}={v}" for k, v in others)
        target = _raw_path(environ) + (f"?{query}" if query else "")
        host = environ.get("HTTP_HOST", "")
        request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"), url=f"http://{host}{target}",
                             headers={"host": host})
        Signer(self.credentials, "s3", self.region).add_auth(request)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
            environ[_environ_header(name)] = request.headers[name]
        environ.pop(_environ_header("X-Amz-Security-Token"), None)
        environ["QUERY_STRING"] = query
        environ["RAW_URI"] = environ["REQUEST_URI"] = target
