"""Bring each course's material into ~/courses/<name>/ at server start (the start hook runs this).

Tasks come from the hub in GPUHUB_COURSES (a JSON list). Never overwrites a student's edit:
- git courses are pulled with nbgitpuller's non-destructive merge;
- volume courses are copied from the read-only course volume: new files arrive,
  files the student has not touched follow the instructor's updates, and an update
  to a file the student changed is put beside it (`lecture1.updated-2026-11-24.ipynb`)
  and noted once in the course folder's README-updates.md.
A failure is written to the course folder (SYNC-PROBLEM.md) and printed for the hub
log; it never stops the server from starting.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HOME = Path(os.environ.get("HOME", "/home/jovyan"))
STAGING = Path(os.environ.get("GPUHUB_COURSE_STAGING", "/opt/gpuhub/courses"))
PROBLEM = "SYNC-PROBLEM.md"
UPDATES = "README-updates.md"


def say(name: str, message: str) -> None:
    print(f"gpuhub-course: {name}: {message}", flush=True)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def beside(path: Path, today: str) -> Path:
    """lecture1.ipynb -> lecture1.updated-2026-11-24.ipynb (keeps the extension, so Lab opens it)."""
    stem, dot, ext = path.name.partition(".")
    return path.with_name(f"{stem}.updated-{today}{dot}{ext}")


def copy_course(source: Path, target: Path, manifest_path: Path, today: str | None = None) -> dict[str, int]:
    """Copy `source` into `target` without losing the student's edits; returns counts."""
    today = today or datetime.date.today().isoformat()
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    counts = {"new": 0, "updated": 0, "kept": 0}
    notes = []
    for src in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = src.relative_to(source).as_posix()
        dest = target / rel
        new_hash = digest(src)
        delivered = manifest.get(rel)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            counts["new"] += 1
        elif (mine := digest(dest)) == new_hash:
            pass
        elif mine == delivered:  # untouched by the student: follow the instructor
            shutil.copyfile(src, dest)
            counts["updated"] += 1
        elif new_hash != delivered:  # both changed: keep the student's, put the update beside it
            other = beside(dest, today)
            shutil.copyfile(src, other)
            counts["kept"] += 1
            notes.append(f"- `{rel}`: your version is kept; the instructor's update of {today} is `{other.name}`.")
        manifest[rel] = new_hash
    if notes:
        readme = target / UPDATES
        header = "" if readme.exists() else "# Course updates next to your own edits\n\n"
        with open(readme, "a") as f:
            f.write(header + "\n".join(notes) + "\n")
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return counts


def pull_git(url: str, branch: str, target: Path, timeout: int) -> str:
    """nbgitpuller's merge; a first clone next to files already there (a data mount) is moved in."""
    if not (target / ".git").exists() and target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # nbgitpuller clones only into a folder that does not exist yet
    if not (target / ".git").exists() and target.exists():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            clone = Path(tmp) / "clone"
            subprocess.run(
                ["gitpuller", url, branch, str(clone)],
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            for item in clone.iterdir():
                if not (target / item.name).exists():
                    item.rename(target / item.name)
        return "cloned"
    subprocess.run(["gitpuller", url, branch, str(target)], check=True, capture_output=True, text=True, timeout=timeout)
    return "pulled"


def run(tasks: list[dict], timeout: int = 120) -> int:
    failures = 0
    for task in tasks:
        name = str(task.get("name", "?"))
        target = HOME / "courses" / name
        problem = target / PROBLEM
        try:
            target.mkdir(parents=True, exist_ok=True)
            if task.get("git"):
                result = pull_git(task["git"], task.get("branch", "main"), target, timeout)
                say(name, f"git {result} from {task['git']} ({task.get('branch', 'main')})")
            elif task.get("volume"):
                if task.get("role") == "instructor":
                    say(name, f"instructor: edit the material in ~/courses-admin/{name}/")
                    continue
                counts = copy_course(STAGING / name, target, HOME / ".gpuhub" / "courses" / f"{name}.json")
                say(name, ", ".join(f"{n} {k}" for k, n in counts.items()))
            data = HOME / "course-data" / name
            if task.get("data") and data.is_dir() and not (target / "data").exists():
                (target / "data").symlink_to(Path("..", "..", "course-data", name))
            problem.unlink(missing_ok=True)
        except Exception as e:  # never keep the server from starting
            failures += 1
            reason = (getattr(e, "stderr", "") or str(e)).strip().splitlines()[-1:] or [type(e).__name__]
            say(name, f"sync failed: {reason[0][:300]}")
            try:
                target.mkdir(parents=True, exist_ok=True)  # a failed first clone leaves no folder
                problem.write_text(
                    f"# Course material could not be updated\n\nAt this server start, bringing in `{name}` failed:\n\n"
                    f"    {reason[0][:300]}\n\nYour files are untouched. It is tried again at your next server start.\n"
                )
            except OSError:  # e.g. a file where the course folder should be: the log line says enough
                pass
    return failures


if __name__ == "__main__":
    raw = os.environ.get("GPUHUB_COURSES", "")
    tasks = json.loads(raw) if raw else []
    run(tasks)
    sys.exit(0)
