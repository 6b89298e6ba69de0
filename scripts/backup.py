#!/usr/bin/env python3
"""`make backup` / `make restore`: one dated archive of a compose deployment's state.

    backup.py backup  --env-file .env --dir backups [--database-only] [--match REGEX]
    backup.py restore --env-file .env --archive backups/gpuhub-20261127T101500Z.tar [--force]

The archive (an uncompressed tar) holds:
  manifest.json            what is inside, each member's size and sha256, how consistent it is
  database/jupyterhub.sqlite  or  database/postgres.dump   the hub database, a transactional snapshot
  volumes/<name>.tar       the hub's data volume (without its database file), every home volume and
                           every course volume, each copied file by file while servers keep running

Docker volumes are read and written through short-lived containers of the hub image (it has tar and
Python), so nothing needs to be installed on the host but Docker and Python 3. Only the standard library.
Run by the Makefile, which passes the deployment's compose command in $COMPOSE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

FORMAT = 1
HOMES = r"^jupyterhub-user-"
COURSES = r"^gpuhub-course-"
CONSISTENCY = (
    "The hub database is a transactional snapshot (SQLite's online backup, or pg_dump). Home and course "
    "volumes are copied file by file while servers keep running: each file is as it was when it was read, "
    "a file being written at that moment may be caught half-written, and files of one home are not from "
    "one instant. Stop a user's server first for a point-in-time copy of that home."
)


class BackupError(Exception):
    """Something the operator must fix; shown as one line."""


def read_settings(env_file: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        if line and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


class Deployment:
    """The names a deployment's settings give its state, and the engine it runs on."""

    def __init__(self, env_file: Path):
        self.settings = read_settings(env_file)
        get = self.settings.get
        self.data_volume = get("GPUHUB_DATA_VOLUME") or "gpuhub-data"
        self.postgres_volume = get("GPUHUB_POSTGRES_VOLUME") or "gpuhub-postgres"
        self.image = get("GPUHUB_HUB_IMAGE") or "gpuhub/hub:latest"
        if get("GPUHUB_DB_URL"):
            self.database = "external"
        else:
            self.database = get("GPUHUB_DATABASE") or "sqlite"
        self.compose = os.environ.get("COMPOSE", "docker-compose")

    def compose_run(self, args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(f"{self.compose} {args}", shell=True, **kwargs)

    def hub_running(self) -> bool:
        ids = self.compose_run("ps -q hub", capture_output=True, text=True).stdout.split()
        return any(docker("inspect", "-f", "{{.State.Running}}", i).strip() == "true" for i in ids)

    def postgres_container(self) -> str:
        ids = self.compose_run("ps -q postgres", capture_output=True, text=True).stdout.split()
        if not ids:
            raise BackupError("the postgres service is not running (GPUHUB_DATABASE=postgres): start it with `make up`")
        return ids[0]


def docker(*args: str, stdin=None, capture: bool = True) -> str:
    proc = subprocess.run(["docker", *args], stdin=stdin, capture_output=capture, text=capture)
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()
        raise BackupError(f"docker {args[0]} failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout if capture else ""


def in_container(dep: Deployment, mounts: dict[str, str], *command: str, stdin=None) -> str:
    """Run `command` in a throwaway container of the hub image (no network) with `mounts`
    (volume or host path -> path[:ro]); its output, or nothing when `stdin` feeds it."""
    args = ["run", "--rm", "--network", "none", *(["-i"] if stdin is not None else [])]
    for source, target in mounts.items():
        args += ["-v", f"{source}:{target}"]
    return docker(*args, "--entrypoint", command[0], dep.image, *command[1:], stdin=stdin, capture=stdin is None)


def volumes(pattern: str) -> list[str]:
    names = docker("volume", "ls", "-q").split()
    return sorted(n for n in names if re.search(pattern, n))


def sha256(stream) -> str:
    """sha256 of a binary file object, read in blocks."""
    digest = hashlib.sha256()
    while block := stream.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256(f)


# --- backup ----------------------------------------------------------------------------------
SQLITE_SNAPSHOT = """
import sqlite3, sys
src = sqlite3.connect("file:/data/jupyterhub.sqlite?mode=ro", uri=True)
dst = sqlite3.connect("/out/jupyterhub.sqlite")
src.backup(dst)
dst.close()
"""


def backup(dep: Deployment, out_dir: Path, database_only: bool, match: str | None) -> Path:
    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = out_dir.resolve()  # Docker takes a relative -v source for a volume name
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"gpuhub-{stamp}{'-database' if database_only else ''}.tar"
    stage = Path(tempfile.mkdtemp(prefix=".gpuhub-backup-", dir=out_dir))
    partial = out_dir / f".{name}.partial"
    try:
        members: list[tuple[str, Path, dict]] = []
        members.append(_database(dep, stage))
        if not database_only:
            selected = [(dep.data_volume, "hub-data")]
            homes = [v for v in volumes(HOMES) if not match or re.fullmatch(match, v)]
            courses = [v for v in volumes(COURSES) if not match or re.fullmatch(match, v)]
            selected += [(v, "home") for v in homes] + [(v, "course") for v in courses]
            for volume, role in selected:
                members.append(_volume(dep, stage, volume, role))
        manifest = {
            "format": FORMAT,
            "created": stamp,
            "database": dep.database,
            "database_only": database_only,
            "consistency": CONSISTENCY,
            "members": [
                {"path": path, "sha256": _file_sha256(file), "bytes": file.stat().st_size, **meta}
                for path, file, meta in members
            ],
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        with tarfile.open(partial, "w") as archive:
            archive.add(stage / "manifest.json", "manifest.json")
            for path, file, _ in members:
                archive.add(file, path)
        final = out_dir / name
        partial.rename(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        partial.unlink(missing_ok=True)
    size = final.stat().st_size
    print(
        f"gpuhub: wrote {final} ({size / 1e6:.1f} MB: database ({dep.database})"
        f"{'' if database_only else f', {len(members) - 1} volumes'}) in {time.monotonic() - started:.1f} s"
    )
    return final


def _database(dep: Deployment, stage: Path) -> tuple[str, Path, dict]:
    if dep.database == "external":
        raise BackupError("GPUHUB_DB_URL names a database elsewhere: back it up with that database's own tools")
    if dep.database == "postgres":
        target = stage / "postgres.dump"
        with open(target, "wb") as f:
            proc = subprocess.run(
                [
                    "docker",
                    "exec",
                    dep.postgres_container(),
                    "sh",
                    "-c",
                    'PGPASSWORD="$POSTGRES_PASSWORD" pg_dump -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Fc',
                ],
                stdout=f,
                stderr=subprocess.PIPE,
                text=False,
            )
        if proc.returncode != 0:
            raise BackupError(f"pg_dump failed: {proc.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
        return "database/postgres.dump", target, {"role": "database"}
    in_container(dep, {dep.data_volume: "/data", str(stage): "/out"}, "python3", "-c", SQLITE_SNAPSHOT)
    return "database/jupyterhub.sqlite", stage / "jupyterhub.sqlite", {"role": "database"}


def _volume(dep: Deployment, stage: Path, volume: str, role: str) -> tuple[str, Path, dict]:
    # The hub data volume's database file is in the archive as a snapshot; a copy of the live file could be torn.
    exclude = "--exclude=./jupyterhub.sqlite* " if role == "hub-data" else ""
    # tar exits 1 when a file changed while read: expected with servers running.
    script = f"tar -C /v --numeric-owner --warning=no-file-changed {exclude}-cf /out/{shlex.quote(volume)}.tar . ; "
    in_container(dep, {volume: "/v:ro", str(stage): "/out"}, "sh", "-c", script + "s=$?; [ $s -le 1 ]")
    return f"volumes/{volume}.tar", stage / f"{volume}.tar", {"role": role, "volume": volume}


# --- restore ---------------------------------------------------------------------------------
def restore(dep: Deployment, archive_path: Path, force: bool) -> None:
    started = time.monotonic()
    if not archive_path.is_file():
        raise BackupError(f"no archive at {archive_path}")
    if dep.hub_running():
        raise BackupError("the hub is running: stop it first (make down); restore replaces its database")
    try:
        archive = tarfile.open(archive_path, "r")
    except tarfile.TarError as e:
        raise BackupError(f"{archive_path} is not a gpuhub backup archive ({e})") from None
    with archive:
        try:
            manifest = json.load(archive.extractfile("manifest.json"))
        except (KeyError, ValueError, TypeError):
            raise BackupError(f"{archive_path} has no readable manifest.json: not a gpuhub backup") from None
        if manifest.get("format") != FORMAT:
            raise BackupError(
                f"{archive_path} is in backup format {manifest.get('format')}, this gpuhub reads {FORMAT}"
            )
        members = manifest["members"]
        for member in members:  # every byte checked before anything is written
            try:
                intact = sha256(archive.extractfile(member["path"])) == member["sha256"]
            except (KeyError, tarfile.TarError, OSError):
                intact = False  # a damaged header hides the member
            if not intact:
                raise BackupError(f"{member['path']} in {archive_path} is damaged (sha256 differs from the manifest)")
        database = manifest["database"]
        if database != dep.database:
            raise BackupError(
                f"the archive holds a {database} database but the settings say GPUHUB_DATABASE={dep.database}"
            )
        targets = {m["path"]: _target(dep, m) for m in members if m["role"] != "database"}
        if database == "postgres":
            targets["database/postgres.dump"] = dep.postgres_volume
        in_use = [v for v in targets.values() if docker("ps", "-aq", "--filter", f"volume={v}").strip()]
        if in_use:
            raise BackupError(
                f"containers use these volumes: {', '.join(in_use)}; stop and remove them first (user servers too)"
            )
        existing = [v for v in targets.values() if _has_data(dep, v)]
        if database == "sqlite" and _has_data(dep, dep.data_volume, "jupyterhub.sqlite"):
            existing.append(f"{dep.data_volume} (its database)")
        if existing and not force:
            raise BackupError(
                f"these volumes exist and are not empty: {', '.join(existing)}; add FORCE=1 to replace them"
            )
        for member in members:
            if member["role"] == "database":
                continue
            volume = targets[member["path"]]
            _fill(dep, volume, archive.extractfile(member["path"]), member["role"])
        db = next(m for m in members if m["role"] == "database")
        if database == "sqlite":
            _put_sqlite(dep, archive.extractfile(db["path"]))
        else:
            _restore_postgres(dep, archive.extractfile(db["path"]), force)
    volumes_done = sum(1 for m in members if m["role"] != "database")
    print(
        f"gpuhub: restored {archive_path.name} (database ({database}), {volumes_done} volumes) in"
        f" {time.monotonic() - started:.1f} s; start gpuhub with `make up`"
    )


def _target(dep: Deployment, member: dict) -> str:
    # The hub's own volumes take this deployment's names; homes and courses keep theirs.
    return dep.data_volume if member["role"] == "hub-data" else member["volume"]


def _has_data(dep: Deployment, volume: str, path: str = "") -> bool:
    """Whether the volume exists and holds anything (with `path`: that file)."""
    if volume not in docker("volume", "ls", "-q").split():
        return False
    if path:
        return (
            in_container(dep, {volume: "/v:ro"}, "sh", "-c", f"test -e /v/{shlex.quote(path)} && echo y").strip() == "y"
        )
    return bool(in_container(dep, {volume: "/v:ro"}, "sh", "-c", "ls -A /v | head -1").strip())


def _fill(dep: Deployment, volume: str, data, role: str) -> None:
    # Homes come back with the size limit homes are made with here (GPUHUB_HOME_SIZE), if any.
    size = dep.settings.get("GPUHUB_HOME_SIZE", "").strip() if role == "home" else ""
    if volume not in docker("volume", "ls", "-q").split():
        docker("volume", "create", *(["--driver", "local", "--opt", f"size={size}"] if size else []), volume)
    with tempfile.TemporaryFile() as tmp:
        shutil.copyfileobj(data, tmp)
        tmp.seek(0)
        script = "find /v -mindepth 1 -delete && tar -C /v --numeric-owner -xpf -"
        in_container(dep, {volume: "/v"}, "sh", "-c", script, stdin=tmp)


def _put_sqlite(dep: Deployment, data) -> None:
    docker("volume", "create", dep.data_volume)
    with tempfile.TemporaryFile() as tmp:
        shutil.copyfileobj(data, tmp)
        tmp.seek(0)
        db = "/data/jupyterhub.sqlite"
        script = f"cat > {db}.restoring && chmod 600 {db}.restoring && rm -f {db}-journal && mv {db}.restoring {db}"
        in_container(dep, {dep.data_volume: "/data"}, "sh", "-c", script, stdin=tmp)


def _restore_postgres(dep: Deployment, data, force: bool) -> None:
    if force and dep.postgres_volume in docker("volume", "ls", "-q").split():
        dep.compose_run("rm -sf postgres", capture_output=True)
        docker("volume", "rm", dep.postgres_volume)
    # A fresh cluster from the settings' password, then the dump into its empty database.
    if dep.compose_run("up -d postgres", capture_output=True).returncode != 0:
        raise BackupError("could not start the postgres service (`make up` shows why)")
    container = dep.postgres_container()
    subprocess.run(["scripts/wait-healthy.sh", container, "120"], check=True)
    with tempfile.TemporaryFile() as tmp:
        shutil.copyfileobj(data, tmp)
        tmp.seek(0)
        proc = subprocess.run(
            [
                "docker",
                "exec",
                "-i",
                container,
                "sh",
                "-c",
                'PGPASSWORD="$POSTGRES_PASSWORD" pg_restore -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
                " --no-owner --exit-on-error",
            ],
            stdin=tmp,
            capture_output=True,
        )
    if proc.returncode != 0:
        raise BackupError(f"pg_restore failed: {proc.stderr.decode(errors='replace').strip().splitlines()[-1:]}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backup.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup")
    b.add_argument("--env-file", type=Path, required=True)
    b.add_argument("--dir", type=Path, required=True)
    b.add_argument("--database-only", action="store_true")
    b.add_argument("--match", help="only home/course volumes whose whole name matches this regular expression")
    r = sub.add_parser("restore")
    r.add_argument("--env-file", type=Path, required=True)
    r.add_argument("--archive", type=Path, required=True)
    r.add_argument("--force", action="store_true", help="replace volumes that exist and hold data")
    args = parser.parse_args(argv)
    os.umask(0o077)  # archives and their parts hold password hashes, tokens and everyone's files
    try:
        if getattr(args, "match", None):
            re.compile(args.match)
        dep = Deployment(args.env_file)
        if args.command == "backup" and args.database_only and dep.database == "external":
            print(
                "gpuhub: the hub database is elsewhere (GPUHUB_DB_URL): back it up with its own tools before upgrading"
            )
        elif args.command == "backup":
            backup(dep, args.dir, args.database_only, args.match)
        else:
            restore(dep, args.archive, args.force)
    except re.error as e:
        print(f"gpuhub: MATCH is not a regular expression: {e}", file=sys.stderr)
        return 2
    except (BackupError, OSError, subprocess.CalledProcessError) as e:
        print(f"gpuhub: {args.command} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
