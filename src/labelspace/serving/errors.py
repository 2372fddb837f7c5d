"""Request errors of the served model, and the guard that keeps MLflow's scoring server from leaking.

What MLflow 3's scoring server (`mlflow models serve`, mlflow.pyfunc.scoring_server.invocations) does
with an exception raised while it predicts:

* an `MlflowException` keeps its error code, and the HTTP status is its `get_http_status_code()`;
  but its message is rewritten as "Failed to predict data '<the input frame>'. Error: <message>",
  which echoes the request back;
* any other exception becomes a 400 BAD_REQUEST whose body holds `stack_trace`: the traceback, with
  the server's paths (what `top_k: null` used to return);
* MLflow checks params and the input schema itself before the model's predict runs, so its own
  errors (`top_k: "abc"`, `labels: 5`, no `image` column) carry the echoed frame too.

`ServingError` is an MlflowException whose message cannot be rewritten and whose HTTP status is its
own. Limits answer 413: no MLflow error code maps to 413 (RESOURCE_EXHAUSTED and
REQUEST_LIMIT_EXCEEDED map to 429, "retry later", wrong for a request that will never fit, and an
unmapped code to 500), so a limit keeps the code INVALID_PARAMETER_VALUE (400 wherever a host maps the
code itself) and says 413 through `get_http_status_code()`, which the scoring server calls.

In `mlflow models serve`, the model installs `guard_scoring_server` when it loads: every request is
checked by the model's own validation (params, input frame, limits) before MLflow's checks run, any
error left is answered without a traceback or an echo, and the traceback of an unexpected error goes
to the server's log instead of the response.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, ErrorCode

log = logging.getLogger(__name__)

PAYLOAD_TOO_LARGE = 413
MAX_MESSAGE = 1000  # characters of a message from MLflow's own checks that reach a response
# `mlflow models serve` sets this for the uvicorn workers it starts (scoring_server._SERVER_MODEL_PATH).
SERVER_MODEL_PATH_ENV = "__pyfunc_model_path__"


class ServingError(MlflowException):
    """A request the model cannot serve; the message is the whole response body's `message`.

    `status` is the HTTP status (400, or 413 for a limit); `row` is the input row at fault, None
    when the whole request is (batch inference skips a row and goes on, or splits a request)."""

    def __init__(self, message: str, *, status: int = 400, row: int | None = None,
                 error_code: int = INVALID_PARAMETER_VALUE) -> None:
        super().__init__(message, error_code=error_code)
        self.status = status
        self.row = row

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        # Set once, by MlflowException.__init__; the scoring server's rewrite (the echoed frame) is dropped.
        if "_message" not in self.__dict__:
            self._message = value

    def get_http_status_code(self) -> int:
        return self.status


def too_large(message: str, row: int | None = None) -> ServingError:
    """A request over one of the serving limits (params.yaml `serving`): 413."""
    return ServingError(message, status=PAYLOAD_TOO_LARGE, row=row)


def in_scoring_server() -> bool:
    """True in the worker processes of `mlflow models serve`."""
    return SERVER_MODEL_PATH_ENV in os.environ


def without_echo(message: str) -> str:
    """An MLflow message without the request it quotes (the input frame, the raw body)."""
    text = str(message)
    if text.startswith("Failed to predict data '") and "\nError: " in text:
        text = text.split("\nError: ", 1)[1]
    if text.startswith("Failed to enforce schema of data '") and " with schema '" in text:
        schema_and_error = text.split(" with schema '", 1)[1]
        text = "the input does not match the model's input schema '" + schema_and_error
    text = text.split("\nInput:", 1)[0]  # a body that is not JSON is quoted after "Input:"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class _CheckedModel:
    """The served PyFuncModel, with the model's own request check in front of MLflow's."""

    def __init__(self, model: Any, check: Callable[[Any, Any], Any]) -> None:
        self._model = model
        self._check = check

    def __getattr__(self, name: str) -> Any:  # metadata, loader_module, ... as the real model has them
        return getattr(self._model, name)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        empty = self._check(data, params)  # raises ServingError; a result when there is nothing to score
        if empty is not None:
            return empty
        try:
            return self._model.predict(data, params=params)
        except ServingError:
            raise
        except MlflowException as e:
            raise ServingError(without_echo(e.message), status=e.get_http_status_code()) from None
        except Exception:
            log.exception("labelspace: unexpected error while scoring a request")
            raise ServingError("internal error while scoring the request; the server's log has the details",
                               status=500, error_code=INTERNAL_ERROR) from None


def guard_scoring_server(check: Callable[[Any, Any], Any]) -> bool:
    """Put `check(frame, params)` in front of every request of MLflow's scoring server in this
    process and answer every error without a traceback or an echo (see the module docstring).
    `check` raises ServingError, or returns the response for a request with nothing to score.
    Returns False, with a warning, when the server's code is not the one this was written for."""
    from mlflow.pyfunc import scoring_server

    original = getattr(scoring_server, "invocations", None)
    if original is None:
        log.warning("labelspace: mlflow.pyfunc.scoring_server has no invocations(): error bodies are not guarded")
        return False
    original = getattr(original, "__wrapped__", original) if getattr(original, "_labelspace_guard", False) else original
    if list(inspect.signature(original).parameters)[:4] != ["data", "content_type", "model", "input_schema"]:
        log.warning("labelspace: MLflow's scoring server changed (invocations%s): error bodies are not guarded",
                    inspect.signature(original))
        return False

    @functools.wraps(original)
    def invocations(data, content_type, model, input_schema, *args, **kwargs):
        try:
            return original(data, content_type, _CheckedModel(model, check), input_schema, *args, **kwargs)
        except ServingError:
            raise
        except MlflowException as e:  # the server's own parsing of the body (not JSON, no dataframe_* key)
            raise ServingError(without_echo(e.message), status=e.get_http_status_code(),
                               error_code=ErrorCode.Value(e.error_code)) from None

    invocations._labelspace_guard = True  # type: ignore[attr-defined]
    scoring_server.invocations = invocations
    return True
