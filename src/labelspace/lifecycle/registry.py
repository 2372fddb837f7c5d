"""The MLflow model registry: register a logged model with its lineage, find versions, move aliases.

Two registered models, so that production is protected by the server and not by this code:

* the candidates, `labelspace` (register.model_name): every trained version, the newest with the
  alias `challenger`; trainers may write here;
* production, `labelspace-production` (`production_model()`): a version is a copy of a candidate
  (`MlflowClient.copy_model_version`: its source is `models:/labelspace/N`, its run, description and
  tags, lineage included, come with it) tagged `candidate.model` and `candidate.version`; `champion`
  and `previous-champion` name versions here. On a team's server only approvers, the gate's service
  account and admins may write it (docs/team-server.md), on sqlite anyone may: the layout is the same.

Aliases only, never the deprecated stages (an alias names at most one version, so moving it is one
call and needs no demotion). `promote()` here is the bare move; labelspace.lifecycle.champion moves
`champion` under the registry lock and records it in the history (`labelspace promote --version N --reason ...`).

Every call goes through labelspace.lifecycle.retry: a busy sqlite database is retried with a bounded
backoff, then reported in one line.
"""

from __future__ import annotations

import logging
import time

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from labelspace.lifecycle.retry import RetryingClient, call
from labelspace.lifecycle.retry import client as retrying_client

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "labelspace"
PRODUCTION_SUFFIX = "-production"
CANDIDATE_MODEL_TAG, CANDIDATE_VERSION_TAG = "candidate.model", "candidate.version"  # a production copy's link back
PRODUCTION_ALIASES = ("champion", "previous-champion")  # aliases of the production model, not of the candidates


def candidate_model(name: str) -> str:
    """The candidates' registered model of `name` (itself, or the one a production model copies from)."""
    return name.removesuffix(PRODUCTION_SUFFIX) or name


def production_model(name: str) -> str:
    """The production registered model of `name` (a candidates' model, or production itself): `<name>-production`."""
    return candidate_model(name) + PRODUCTION_SUFFIX


DEFAULT_MODEL_URI = f"models:/{production_model(DEFAULT_MODEL_NAME)}@champion"  # what serves
READY_TIMEOUT_S = 300


def _client() -> RetryingClient | MlflowClient:
    return retrying_client()


def _is_missing(error: MlflowException) -> bool:
    return error.error_code == "RESOURCE_DOES_NOT_EXIST"


def _wait_until_ready(client: MlflowClient, version: ModelVersion, timeout_s: float) -> ModelVersion:
    deadline = time.monotonic() + timeout_s
    while version.status != "READY":
        if version.status == "FAILED_REGISTRATION":
            raise RuntimeError(
                f"registering {version.name} version {version.version} failed: {version.status_message}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{version.name} version {version.version} is still {version.status} after {timeout_s:.0f} s; "
                "check the registry server's logs"
            )
        time.sleep(1.0)
        version = client.get_model_version(version.name, version.version)
    return version


def register_model(
    model_uri: str,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    alias: str = "challenger",
    tags: dict[str, str],
    description: str | None = None,
) -> ModelVersion:
    """Register `model_uri` as a new version of `model_name`, tagged with `tags` and given `alias`.

    Returns the version once it is READY, with its tags, alias and description set.
    """
    client = _client()
    tags = {str(k): str(v) for k, v in tags.items()}
    try:
        client.get_registered_model(model_name)
    except MlflowException as e:
        if not _is_missing(e):
            raise
        try:
            client.create_registered_model(
                model_name, description="Multilabel image tagging by an image-conditioned label space (labelspace)"
            )
        except MlflowException as race:
            if race.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    # mlflow.register_model resolves runs:/ and models:/ URIs to the logged model (MLflow 3 links
    # the version to its LoggedModel); waiting is ours, so a slow registry gets a clear error.
    version = call(mlflow.register_model, model_uri, model_name, await_registration_for=0, tags=tags)
    version = _wait_until_ready(client, version, READY_TIMEOUT_S)
    if description:
        client.update_model_version(model_name, version.version, description=description)
    # create_model_version stores the tags, but a registry proxying to another one may drop them: set
    # them again so the version carries its lineage whatever the backend.
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    client.set_registered_model_alias(model_name, alias, version.version)
    log.info("registered %s version %s (%s) with alias %s", model_name, version.version, model_uri, alias)
    return client.get_model_version(model_name, version.version)


def register_trained_model(
    model,
    register,
    *,
    metrics: dict,
    dataset_version: str,
    vectors_version: str,
    params_hash: str,
    repo_root: str,
    zenml_run_id: str,
    zenml_model: tuple[str, str] | None,
    package,
) -> dict[str, str | bool]:
    """Log `model` (a label-space TrainedModel) as the served pyfunc in the active run and register
    it as `register.alias` (config.RegisterConfig) with every lineage tag; nothing when a version
    already holds the same weights. `package()` gives (open vocabulary, input example image)."""
    from labelspace.lifecycle.lineage import lineage_tags, record_on_run, recorded_params
    from labelspace.lifecycle.training_inputs import source_hash
    from labelspace.serving.pyfunc import log_labelspace_model

    name, alias = register.model_name, register.alias
    content_hash = model.content_hash()
    existing = find_version_by_tag(name, "model.content_hash", content_hash)
    if existing is not None:
        print(f"{name} version {existing.version} already holds these weights: nothing registered")
        return {"name": name, "version": str(existing.version), "new": False}
    top3 = metrics.get("labelspace", {}).get("top3", {})
    params = recorded_params(repo_root, params_hash)  # (file, contents) unless it changed since the run read it
    tags = lineage_tags(
        dataset_version=dataset_version, vectors_version=vectors_version, params_hash=params_hash,
        zenml_run_id=zenml_run_id, backbone=model.spec.backbone,
        pretrained_hash=model.provenance.get("weights_hash"), repo_root=repo_root,
        provenance=model.provenance, params_file=params[0] if params else None,
        zenml_model_name=zenml_model[0] if zenml_model else None,
        zenml_model_version=zenml_model[1] if zenml_model else None,
        extra={"model.content_hash": content_hash, "code.source_hash": source_hash(),
               **{f"metrics.top3.{k}": f"{top3[k]:.4f}" for k in ("C-F1", "O-F1") if k in top3}},
    )
    record_on_run(tags, packages=model.provenance.get("packages"), params=params[1] if params else None)
    open_vocabulary, example = package()
    info = log_labelspace_model(model, open_vocabulary=open_vocabulary, input_example_image=example)
    version = register_model(info.model_uri, model_name=name, alias=alias, tags=tags,
                             description=f"labelspace {model.spec.backbone} k={model.spec.k}")
    print(f"registered {name} version {version.version} as @{alias}")
    return {"name": name, "version": str(version.version), "alias": alias, "model_uri": info.model_uri, "new": True}


def alias_holder(model_name: str, alias: str) -> str | None:
    """The version number (as text) that `alias` names now, or None when the alias (or the model) does not exist."""
    try:
        return str(_client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException as e:
        if _is_missing(e) or e.error_code == "INVALID_PARAMETER_VALUE":
            return None
        raise


def versions(model_name: str, client=None) -> list[ModelVersion]:
    """Every (not deleted) version of `model_name`, oldest first; [] when there is no such model."""
    client = client or _client()
    found = client.search_model_versions(f"name = '{_quoted(model_name)}'")
    return sorted(found, key=lambda v: int(v.version))


def resolve_version(model_name: str, ref: str | int, *, ready: bool = True, client=None) -> ModelVersion:
    """The version `ref` names: a number ('3') or an alias ('@champion'). A clear ValueError when the
    model, the version or the alias does not exist, the version was deleted, or (ready=True) it is not READY."""
    client = client or _client()
    ref = str(ref).strip()
    if ref.startswith("@"):
        alias = ref[1:]
        try:
            version = client.get_model_version_by_alias(model_name, alias)
        except MlflowException as e:
            if not (_is_missing(e) or e.error_code == "INVALID_PARAMETER_VALUE"):
                raise
            raise ValueError(f"model {model_name!r} has no alias @{alias}; {_aliases_listing(model_name, client)}") from None
        number = str(version.version)
        try:  # an alias whose version is gone (a backend that keeps aliases of deleted versions)
            version = client.get_model_version(model_name, number)
        except MlflowException as e:
            if not _is_missing(e):
                raise
            raise ValueError(f"{model_name}@{alias} names version {number}, which was deleted; move the alias "
                             f"with `labelspace promote --version N --alias {alias} --reason ...`") from None
    else:
        if not ref.isdigit():
            raise ValueError(f"{ref!r} is neither a version number nor an @alias (e.g. 3 or @champion)")
        try:
            version = client.get_model_version(model_name, ref)
        except MlflowException as e:
            if not _is_missing(e):
                raise
            existing = [str(v.version) for v in versions(model_name, client)]
            listing = ", ".join(existing) if existing else "none: register a model first"
            raise ValueError(f"model {model_name!r} has no version {ref} (deleted, or never registered); "
                             f"its versions are {listing}") from None
    if ready and version.status != "READY":
        raise ValueError(f"{model_name} version {version.version} is {version.status}, not READY"
                         f"{': ' + version.status_message if version.status_message else ''}; wait for it or pick another")
    return version


def _aliases_listing(model_name: str, client) -> str:
    try:
        aliases = {a: str(v) for a, v in (client.get_registered_model(model_name).aliases or {}).items()}
    except MlflowException as e:
        if _is_missing(e):
            return "there is no such registered model yet: run the pipeline first"
        raise
    production = production_model(model_name)
    if model_name != production:  # production's aliases, by the candidate numbers they copy
        try:
            held = client.get_registered_model(production).aliases or {}
        except MlflowException as e:
            if not _is_missing(e):
                raise
            held = {}
        for alias, number in held.items():
            aliases[alias] = f"{candidate_of(client, model_name, str(number))} (in {production})"
    if not aliases:
        return "it has no aliases yet"
    return "its aliases: " + ", ".join(f"@{a} -> version {v}" for a, v in sorted(aliases.items()))


def resolve_candidate(model_name: str, ref: str | int, *, ready: bool = True, client=None) -> ModelVersion:
    """The candidate version `ref` names: a number of `model_name` (a production model's number is followed
    to the candidate it copies), production's @champion or @previous-champion (the candidates' own on a
    store from before production), or another alias of the candidates (@challenger)."""
    client = client or _client()
    candidate, production = candidate_model(model_name), production_model(model_name)
    ref = str(ref).strip()
    on_production = ref.lstrip("@") in PRODUCTION_ALIASES if ref.startswith("@") else model_name == production
    if not on_production:
        return resolve_version(candidate, ref, ready=ready, client=client)
    try:
        copy = resolve_version(production, ref, ready=False, client=client)
    except ValueError:
        if ref.startswith("@") and alias_holder(candidate, ref[1:]) is not None:
            return resolve_version(candidate, ref, ready=ready, client=client)
        raise
    return resolve_version(candidate, copy.tags[CANDIDATE_VERSION_TAG], ready=ready, client=client)


def promote(model_name: str, version: str | int, alias: str = "champion") -> ModelVersion:
    """Point production's `alias` at (a copy of) candidate `version` of `model_name`, unrecorded and unlocked;
    labelspace.lifecycle.champion.promote_version is the recorded, locked move."""
    client = _client()
    copy = production_copy(client, model_name, str(resolve_version(model_name, version, client=client).version))
    client.set_registered_model_alias(copy.name, alias, copy.version)
    return copy


def production_copy(client, model_name: str, version: str) -> ModelVersion:
    """The production version that copies candidate `version` of `model_name`: the one made before, else a
    new one (copy_model_version), linked back by its `candidate.*` tags. Tags a copy takes from the
    candidate about champion moves of the layout before production existed are dropped."""
    import contextlib
    import io

    candidate, production = candidate_model(model_name), production_model(model_name)
    made = [v for v in client.search_model_versions(
        f"name = '{_quoted(production)}' and tags.`{CANDIDATE_VERSION_TAG}` = '{_quoted(str(version))}'")
        if v.tags.get(CANDIDATE_MODEL_TAG) == candidate]
    if made:
        return max(made, key=lambda v: int(v.version))
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Copied version ..." itself
        copy = client.copy_model_version(f"models:/{candidate}/{version}", production)
    copy = _wait_until_ready(client, copy, READY_TIMEOUT_S)
    client.set_model_version_tag(production, copy.version, CANDIDATE_MODEL_TAG, candidate)
    client.set_model_version_tag(production, copy.version, CANDIDATE_VERSION_TAG, str(version))
    for key in [k for k in copy.tags if k.startswith("champion.")]:
        client.delete_model_version_tag(production, copy.version, key)
    log.info("copied %s version %s to %s version %s", candidate, version, production, copy.version)
    return client.get_model_version(production, copy.version)


def candidate_of(client, model_name: str, production_version: str | None) -> str | None:
    """The candidate version number that production version `production_version` copies (None for None)."""
    if production_version is None:
        return None
    copy = client.get_model_version(production_model(model_name), str(production_version))
    return copy.tags.get(CANDIDATE_VERSION_TAG) or None


def find_version_by_tag(model_name: str, key: str, value: str) -> ModelVersion | None:
    """The newest version of `model_name` whose tag `key` equals `value`, or None."""
    client = _client()
    query = f"name = '{_quoted(model_name)}' and tags.`{key}` = '{_quoted(str(value))}'"
    try:
        found = client.search_model_versions(query)
    except MlflowException as e:
        if _is_missing(e):
            return None
        raise
    return max(found, key=lambda v: int(v.version)) if found else None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
