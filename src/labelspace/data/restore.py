"""Put a DVC-tracked output back at a recorded version, by its hash: the dataset or vectors a model
version was trained on, from the DVC cache or a DVC remote, whatever the work tree holds now.

`restore_output(tree, path, md5, source=checkout)` works in `tree`, a DVC repository that is a scratch
copy of the project (`labelspace reproduce` makes it a git worktree of the training commit): it shares
the cache and the remotes of `source` (the user's checkout, where `dvc repro` or `dvc add` put the data
in the cache), points the output's entry in dvc.lock or `<path>.dvc` at `md5`, then runs DVC's own
fetch (only what the cache lacks) and checkout. The remotes are tried in turn, the default first, until
one holds it all: a team member's clone has the team's S3 remote as `team` (`labelspace team
dvc-remote`, its key in .dvc/config.local, copied into the scratch copy) and may have no default.
Nothing in `source` changes.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import yaml


class DataUnavailable(RuntimeError):
    """A recorded data version is in neither the DVC cache nor a DVC remote."""


def _where(source: Path) -> tuple[str, dict[str, str], str | None, Path | None]:
    """(cache folder, {remote name: url}, default remote, source's config.local) of the checkout `source`."""
    from dvc.repo import Repo

    with Repo(str(source)) as repo:
        cache = str(Path(repo.cache.local.path).parents[1])  # <cache dir>/files/md5
        remotes = {name: str(conf.get("url", "")) for name, conf in repo.config["remote"].items()}
        default = repo.config["core"].get("remote")
    local = source / ".dvc" / "config.local"
    return cache, remotes, default, local if local.is_file() else None


def share_cache_and_remotes(tree: Path, source: Path) -> tuple[str, dict[str, str], str | None]:
    """Make `tree`'s DVC use `source`'s cache and remotes (a remote given as a relative path is
    relative to `source`, not to the copy); returns (cache, remotes, default remote)."""
    from dvc.repo import Repo

    cache, remotes, default, local = _where(source)
    config_local = tree / ".dvc" / "config.local"
    if local is not None:  # credentials of the remotes live here, never in git
        config_local.write_bytes(local.read_bytes())
    with Repo(str(tree)) as repo, repo.config.edit("local") as conf:
        conf["cache"]["dir"] = cache
        for name, url in remotes.items():
            conf["remote"].setdefault(name, {})["url"] = url
        if default:
            conf["core"]["remote"] = default
    return cache, remotes, default


def _normalize(path: str) -> str:
    return PurePosixPath(str(path).replace("\\", "/")).as_posix().removeprefix("./").rstrip("/")


def pin_output(tree: Path, rel_path: str, md5: str) -> Path:
    """Point the entry of `rel_path` in `tree`'s dvc.lock files or `<rel_path>.dvc` at `md5`; returns
    the file changed. A clear error when no DVC file of the tree declares that output."""
    rel_path = _normalize(rel_path)
    candidates = [tree / (rel_path + ".dvc"), *sorted(tree.rglob("dvc.lock"))]
    for dvc_file in candidates:
        if not dvc_file.is_file() or ".dvc" in dvc_file.relative_to(tree).parts[:-1]:
            continue
        document = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
        prefix = dvc_file.parent.relative_to(tree).as_posix()
        outs = document.get("outs", []) if dvc_file.suffix == ".dvc" else \
            [out for stage in (document.get("stages") or {}).values() for out in stage.get("outs", [])]
        for out in outs:
            if _normalize(f"{prefix}/{out.get('path', '')}") == rel_path:
                for stale in ("size", "nfiles", "md5"):
                    out.pop(stale, None)
                out["md5"] = md5
                dvc_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
                return dvc_file
    raise DataUnavailable(f"{rel_path} is declared by no dvc.lock and has no {rel_path}.dvc in {tree}: "
                          "only data DVC tracks can be restored by its hash")


def restore_output(tree: Path, rel_path: str, md5: str, *, source: Path) -> None:
    """`tree/rel_path` becomes the DVC output whose hash is `md5` (module doc). DataUnavailable, in one
    line naming the version and where it looked, when neither the cache nor a remote holds it all."""
    from dvc.exceptions import CheckoutError, DvcException
    from dvc.repo import Repo

    cache, remotes, default = share_cache_and_remotes(tree, source)
    pin_output(tree, rel_path, md5)
    target = [str(tree / rel_path)]
    order = [default] if default else []
    order += [name for name in remotes if name != default]
    looked: list[str] = []
    with Repo(str(tree)) as repo:
        for remote in [None, *order]:  # the cache alone first: nothing to fetch when it holds the version
            if remote is not None:
                try:
                    repo.fetch(targets=target, remote=remote)
                    looked.append(f"the DVC remote {remote} ({remotes.get(remote, '?')})")
                except DvcException as e:  # the checkout below then misses something: the next remote
                    looked.append(f"the DVC remote {remote} ({remotes.get(remote, '?')}: "
                                  f"{str(e).splitlines()[0][:200]})")
            try:
                repo.checkout(targets=target, force=True)
                break
            except CheckoutError:
                continue
        else:
            where = " nor on ".join(looked) if looked else "no DVC remote (none is configured)"
            raise DataUnavailable(
                f"data version {md5} of {rel_path} is not in the DVC cache {cache} and not on {where}: "
                f"`dvc push` it from the checkout that trained the version, or point the DVC remote at a store "
                f"that holds it") from None
    if not (tree / rel_path).exists():
        raise DataUnavailable(f"data version {md5} of {rel_path}: DVC restored nothing at {tree / rel_path}")


def relative_to_tree(path: str | os.PathLike, project: Path, tree_root: Path) -> str:
    """`path` (params.yaml's, relative to the project folder `project` inside `tree_root`) relative to the tree."""
    full = Path(path) if Path(path).is_absolute() else project / path
    try:
        return _normalize(os.path.relpath(full.resolve(), tree_root.resolve()))
    except ValueError:
        return _normalize(str(full))
