"""`labelspace team up|down|status|env|dvc-remote|backup|restore|user`: the team stack (PostgreSQL,
SeaweedFS S3, MLflow with logins, MariaDB, the ZenML server) under .team/ (docs/team-server.md).

What `up` prints may be logged: it shows each password as `…`. `env` prints them, to be eval'ed;
`dvc-remote` writes the S3 key into .dvc/config.local (mode 600) without any command line holding it."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

ACTIONS = ("up", "down", "status", "env", "dvc-remote", "backup", "restore", "user")
USER_VERBS = ("add", "list", "disable", "reset-password", "env")


def configure_parser(p: argparse.ArgumentParser) -> None:
    from labelspace.deploy.processes import HOST, LABELS
    from labelspace.deploy.team import DEFAULT_DIR, DEFAULT_PORTS, SERVICES

    p.add_argument("action", choices=ACTIONS, help="what to do; env prints the member's exports with their "
                   "passwords, for eval \"$(labelspace team env)\" only: never log its output; dvc-remote points a "
                   "DVC repo's remote `team` at the stack's bucket, its key in .dvc/config.local (mode 600)")
    p.add_argument("backup_dir", nargs="?", default=None, help="restore: the folder `team backup --out` wrote; "
                   f"user: {'|'.join(USER_VERBS)}")
    p.add_argument("login", nargs="?", default=None, help="user add|disable|reset-password|env: the person's login")
    p.add_argument("--role", default=None, help="user add: reader|trainer|approver|admin (docs/team-server.md)")
    p.add_argument("--dir", default=None, help=f"the stack's folder (default: {DEFAULT_DIR}/ in the current folder; "
                   "restore: the new stack's folder, absent or empty)")
    p.add_argument("--out", default=None, help="backup: the folder to write (absent or empty), e.g. named by the date")
    for name in SERVICES:
        p.add_argument(f"--{name}-port", type=int, default=None,
                       help=f"{LABELS[name]} port on {HOST} (up, restore; default: the saved one, else "
                            f"{DEFAULT_PORTS[name]}; 0: any free)")
    p.add_argument("--upgrade-db", action="store_true",
                   help="up, restore: back up (pg_dump) and migrate a database whose schema is older than the installed MLflow")
    p.add_argument("--workers", type=int, default=2, help="up, restore: MLflow server worker processes (default 2)")
    p.add_argument("--ci", action="store_true",
                   help="env: the scheduler's and CI's login: MLflow as the `retrain` service account (its gate "
                        "promotes), ZenML with the `ci` service account's API key, instead of the shared `team` "
                        "login (a trainer)")
    p.add_argument("--repo", default=".", help="dvc-remote: a folder of the DVC repo to configure (default: the "
                   "current folder)")
    p.add_argument("--default", action="store_true", help="dvc-remote: also make `team` the repo's default remote")


def _ports(args: argparse.Namespace) -> dict[str, int | None]:
    from labelspace.deploy.team import SERVICES

    return {f"{name}_port": getattr(args, f"{name}_port") for name in SERVICES}


def _print_info(info: dict[str, Any], out: Callable[[str], None] = print) -> None:
    from labelspace.deploy.postgres import AUTH_DB, DB_ROLE, TRACKING_DB
    from labelspace.deploy.processes import HOST
    from labelspace.deploy.team import DVC_REMOTE

    p = info["ports"]
    out(f"\nTeam stack in {info['folder']}:")
    out(f"  PostgreSQL  {HOST}:{p['postgres']}  databases {TRACKING_DB}, {AUTH_DB} (owner {DB_ROLE})")
    out(f"  S3          {info['s3_endpoint']}  SeaweedFS, buckets {', '.join(info['buckets'].values())} (versioned, "
        f"on disk in {info['folder']}/s3)")
    out(f"  MLflow      {info['mlflow_uri']}  basic auth; artifacts in {info['artifact_destination']}")
    out(f"  MariaDB     {HOST}:{p['mariadb']}  database zenml (the ZenML server's)")
    out(f"  ZenML       {info['zenml_uri']}  stack labelspace-team: artifacts in s3://{info['buckets']['zenml']}, "
        "MLflow as tracker and registry")
    stack_option = _stack_option(info["folder"])
    env_command = f'eval "$(labelspace team env{stack_option})"'
    out(f"\nA team member runs {env_command}, which exports (its output holds the passwords: never log it):")
    for key, value in info["env"].items():
        if key in info["secret_env"]:
            out(f"  export {key}=…  # secret: {env_command} sets it")
        else:
            out(f"  export {key}={shlex.quote(value)}")
    out("then `labelspace setup-stack` activates the team's ZenML stack (CI: `labelspace team env --ci`).")
    out(f"\nDVC remote `{DVC_REMOTE}`: these two lines may be committed (.dvc/config); then, in each clone, "
        f"`labelspace team dvc-remote{stack_option}` sets them too and writes the S3 key into .dvc/config.local "
        f"(mode 600, ignored by git; add --default to make `{DVC_REMOTE}` the default remote); then "
        f"`dvc push -r {DVC_REMOTE}`:")
    for argv in info["dvc_commands"]:
        out("  " + shlex.join(argv))
    out(f"  labelspace team dvc-remote{stack_option}")
    out(f"\nAdmin (user management): {info['admin']['username']}, password in {info['folder']}/secrets.json")


def _stack_option(folder: str) -> str:
    """` --dir FOLDER` for the commands `up` shows, unless FOLDER is the default one of the current folder."""
    from labelspace.deploy.team import stack_layout

    return "" if stack_layout(None).root == stack_layout(folder).root else f" --dir {shlex.quote(folder)}"


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.deploy import backup, team
    from labelspace.deploy.processes import LABELS

    if args.action in ("up", "restore"):
        if args.action == "up":
            info = team.team_up(args.dir, upgrade_db=args.upgrade_db, workers=args.workers, **_ports(args))
            print(f"team stack up in {info['seconds']} s"
                  + (f" (started: {', '.join(info['started'])})" if info["started"] else ""))
        else:
            if not args.backup_dir or not args.dir:
                raise team.TeamError("restore needs the backup folder and the new stack's folder: "
                                     "labelspace team restore BACKUP_DIR --dir NEW_FOLDER")
            info = backup.team_restore(args.backup_dir, args.dir, upgrade_db=args.upgrade_db, workers=args.workers,
                                       **_ports(args))
            print(f"team stack restored from {args.backup_dir} and up in {info['seconds']} s")
        _print_info(info)
        return 0
    if args.action == "user":
        return _user(args)
    if args.action == "dvc-remote":
        from labelspace.deploy.dvc_remote import configure_team_remote

        local = configure_team_remote(args.dir, args.repo, default=args.default)
        print(f"DVC remote `{team.DVC_REMOTE}` set in {local.parent / 'config'}"
              + (" (the default remote)" if args.default else "") + f"; its key in {local} (mode 600)")
        return 0
    if args.action == "backup":
        if not args.out:
            raise team.TeamError("backup needs --out DIR: the folder to write (absent or empty)")
        manifest = backup.team_backup(args.dir, args.out)
        s3 = manifest["services"].get("s3", {})
        print(f"backed up to {args.out} in {manifest['seconds']['total']} s: databases "
              f"{', '.join(manifest['services'].get('postgres', {}))}; buckets "
              + ", ".join(f"{b} ({v['versions']} object versions)" for b, v in s3.items()))
        return 0
    if args.action == "down":
        stopped = team.team_down(args.dir)
        print("team stack stopped" if stopped else "team stack was not running")
        return 0
    if args.action == "status":
        status = team.team_status(args.dir)
        for name, s in status.items():
            state = "up" if s["healthy"] else ("running, not answering" if s["running"] else "stopped")
            pid = f"PID {s['pid']}" if s["pid"] else "no PID"
            print(f"  {LABELS[name]:<15} {state:<23} port {s['port']:<6} {pid:<10} log {s['log']}")
        return 0 if all(s["healthy"] for s in status.values()) else 1
    info = team.team_info(args.dir)
    if args.ci and not info["ci_env"]:
        raise team.TeamError("no ZenML API key for CI in secrets.json yet: run `labelspace team up`")
    print(f"# labelspace team stack in {info['folder']}")
    for key, value in (info["ci_env"] if args.ci else info["env"]).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _user(args: argparse.Namespace) -> int:
    """`team user add NAME --role R | list | disable NAME | reset-password NAME | env NAME`; passwords only in files."""
    from labelspace.deploy import team
    from labelspace.deploy.users import Accounts

    verb, name = args.backup_dir, args.login
    if verb not in USER_VERBS or (verb != "list" and not name) or (verb == "add" and not args.role):
        raise team.TeamError("usage: labelspace team user add NAME --role reader|trainer|approver|admin, "
                             "list, disable NAME, reset-password NAME, env NAME")
    stack = team.read_stack(args.dir)
    accounts = Accounts(stack.layout, stack.config, stack.sec)
    if verb == "list":
        for login, entry in sorted(accounts.users().items()):
            print(f"  {login:<20} {entry['role']:<9} {entry['state']:<9} since {entry['changed']}")
        return 0
    if verb == "disable":
        accounts.disable(name)
        print(f"{name} disabled on MLflow and ZenML (MLflow workers that checked the old password keep it "
              "for at most a minute)")
        return 0
    if verb == "env":
        for key, value in accounts.env(name).items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    path = accounts.add(name, args.role) if verb == "add" else accounts.reset_password(name)
    print(f"{name} ({accounts.users()[name]['role']}): password in {path} (mode 600); hand it over, then delete "
          f"the file. {name} exports: eval \"$(labelspace team user env {name})\"")
    return 0


def main(argv: list[str] | None = None) -> int:
    from labelspace.deploy.processes import TeamError

    parser = argparse.ArgumentParser(prog="labelspace team", description=__doc__.split("\n")[0])
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except TeamError as e:
        print(f"labelspace team {args.action}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
