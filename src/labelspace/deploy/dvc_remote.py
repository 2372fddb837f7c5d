"""`labelspace team dvc-remote`: the team's S3 bucket as the DVC remote `team` of a DVC repo.

It writes through DVC's own config API (`Config.edit`, what `dvc remote add/modify` call), so
the S3 key never reaches a command line (`dvc remote modify --local team secret_access_key KEY`
would show it in `ps` and in shell history):

- `.dvc/config` (committed): the remote's url and endpointurl, and with `default` `core.remote`;
- `.dvc/config.local` (git-ignored by `dvc init`): access_key_id and secret_access_key, in a file
  made mode 600 before the key is written into it.
"""

from __future__ import annotations

import os
from pathlib import Path

from labelspace.deploy.processes import TeamError, without_secrets
from labelspace.deploy.team import DVC_REMOTE, team_info


def _private_file(path: Path) -> None:
    """Create `path` (or keep it) with mode 600: DVC then writes into it without changing the mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def configure_team_remote(stack_folder: str | os.PathLike | None, repo_dir: str | os.PathLike = ".", *,
                          default: bool = False) -> Path:
    """Point the DVC repo that holds `repo_dir` at the stack's bucket (remote `team`, its key in
    .dvc/config.local, mode 600); `default`: make `team` the repo's default remote. Idempotent: run
    again after `team restore` or a new key. Returns the path of config.local."""
    from dvc.config import Config
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    info = team_info(stack_folder)
    try:
        # what `dvc remote add/modify` do: the config unvalidated until written (a half-set remote can be fixed)
        config = Config(dvc_dir=Repo.find_dvc_dir(str(repo_dir)), validate=False)
        local = Path(config.files["local"])
        _private_file(local)
        with config.edit("repo") as conf:
            conf["remote"].setdefault(DVC_REMOTE, {}).update(url=info["dvc_remote_url"], endpointurl=info["s3_endpoint"])
            if default:
                conf["core"]["remote"] = DVC_REMOTE
        with config.edit("local") as conf:
            conf["remote"].setdefault(DVC_REMOTE, {}).update(**info["s3_credentials"])
    except NotDvcRepoError:
        raise TeamError(f"{Path(repo_dir).resolve()} is not in a DVC repo: run `dvc init` there first, "
                        "or give the repo with --repo DIR") from None
    except DvcException as e:  # e.g. a config file DVC cannot parse (its message may quote a line of it)
        raise TeamError(f"DVC could not set the remote `{DVC_REMOTE}` for {Path(repo_dir).resolve()}: "
                        f"{without_secrets(str(e), info['s3_credentials']).rstrip('.')}. Fix or remove the file it names") from None
    return local
