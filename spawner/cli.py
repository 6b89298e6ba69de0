"""gpuhub: the command line of lab admins, instructors and students (docs/cli.md). Talks to the
hub's REST API with a token.

    export GPUHUB_URL=http://localhost:8000 GPUHUB_TOKEN=<token from /hub/token>
    gpuhub gpus                                    # the GPU map: who holds which device, how busy
    gpuhub queue                                   # who waits for a GPU (queue remove USER[/SERVER])
    gpuhub quota show students                     # a group's quota, budgets and recent changes
    gpuhub quota set students max_devices_per_user=1 gpu_hours_per_user=20/week
    gpuhub usage --since 7d --by group [--csv]     # GPU-hours
    gpuhub stop ann/train                          # stop a server (files are kept)
    gpuhub course create ml101 --title "ML 101" --git https://git.example.edu/ml101.git --instructor alice
    gpuhub course enroll ml101 bob carol
    gpuhub course publish ml101 ./material        # volume courses: copy files into the course volume
    gpuhub course link ml101 week1/lecture1.ipynb  # an "open in gpuhub" link (nbgitpuller format)
    gpuhub ssh-config --add-key ~/.ssh/id_ed25519.pub >> ~/.ssh/config   # then: ssh gpuhub-<you>

Bad input exits non-zero with one line and changes nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlencode

from . import cli_admin, cli_ssh, container, courses
from .cli_client import CLIError, Hub

__all__ = ["CLIError", "Hub", "main", "parser"]

#: The notebook server's uid/gid and account name, as the spawner's defaults give them
#: (`GPUDockerSpawner.notebook_user`, the image's home `GPUDockerSpawner.home_path`).
NOTEBOOK_UID, NOTEBOOK_GID = (int(x) for x in container.DEFAULT_USER.split(":"))
NOTEBOOK_ACCOUNT = PurePosixPath(container.DEFAULT_HOME_PATH).name


def cmd_create(hub: Hub, a) -> str:
    name = courses.check_name(a.name)
    if bool(a.git) == bool(a.volume):
        raise CLIError("give exactly one source: --git URL or --volume")
    spec = {
        "title": a.title or name,
        "instructors": list(a.instructor) + [f"group:{g}" for g in a.instructor_group],
        "source": {"git": a.git, "branch": a.branch} if a.git else {"volume": True},
        "data": a.data,
        **({"profile": a.profile} if a.profile else {}),
    }
    course = courses.parse(courses.GROUP_PREFIX + name, spec)  # validates URL, branch, instructors
    hub.check_users(list(course.instructors))
    if hub.group(name) is not None:
        raise CLIError(f"course {name!r} exists already")
    group = courses.GROUP_PREFIX + name
    hub.call("POST", f"/groups/{group}")
    try:
        hub.call("PUT", f"/groups/{group}/properties", json={courses.PROPERTY: course.to_property()})
    except CLIError:
        hub.call("DELETE", f"/groups/{group}", ok=(200, 204, 404))
        raise
    return f"created course {name} (group {group})"


def cmd_show(hub: Hub, a) -> str:
    group, course = hub.course(a.name)
    source = f"git {course.git} ({course.branch})" if course.git else f"volume {courses.volume_name(course.name)}"
    lines = [
        f"course      {course.name}: {course.title}",
        f"source      {source}",
        f"instructors {', '.join(course.instructors + tuple('group:' + g for g in course.instructor_groups)) or '-'}",
        f"students    {', '.join(sorted(group.get('users', []))) or '-'}",
    ]
    if course.data:
        lines.append(f"data        {courses.data_volume_name(course.name)} (read-only for students)")
    if course.profile:
        lines.append(f"profile     {course.profile}")
    return "\n".join(lines)


def cmd_list(hub: Hub, a) -> str:
    rows = []
    for group in hub.call("GET", "/groups").json():
        props = group.get("properties") or {}
        if group["name"].startswith(courses.GROUP_PREFIX) and courses.PROPERTY in props:
            try:
                c = courses.parse(group["name"], props[courses.PROPERTY])
                rows.append(f"{c.name:20} {len(group.get('users', [])):4d} students  {c.title}")
            except courses.CourseError as e:
                rows.append(f"{group['name']:20} INVALID: {e}")
    return "\n".join(rows) or "no courses"


def cmd_delete(hub: Hub, a) -> str:
    hub.course(a.name)
    if not a.yes:
        raise CLIError(f"deleting course {a.name} removes its group and enrolment; add --yes to confirm")
    hub.call("DELETE", f"/groups/{courses.GROUP_PREFIX}{a.name}")
    return f"deleted course {a.name} (students' copies and the course volume are kept)"


def cmd_enroll(hub: Hub, a, drop: bool = False) -> str:
    group, _ = hub.course(a.name)
    hub.check_users(a.users)
    method = "DELETE" if drop else "POST"
    hub.call(method, f"/groups/{group['name']}/users", json={"users": a.users})
    return f"{'dropped' if drop else 'enrolled'} {', '.join(a.users)} {'from' if drop else 'in'} {a.name}"


def cmd_publish(hub: Hub, a) -> str:
    _, course = hub.course(a.name)
    if not course.volume:
        raise CLIError(f"course {a.name} takes its material from git; push to {course.git} instead")
    root = Path(a.path)
    if not root.is_dir():
        raise CLIError(f"{a.path} is not a directory")
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            # Owned by the notebook user, so the course's instructors can edit what they upload.
            # (names too: tar maps owners by name first, and this machine's names mean nothing there)
            info.uid, info.gid, info.uname, info.gname = NOTEBOOK_UID, NOTEBOOK_GID, NOTEBOOK_ACCOUNT, "users"
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                count += 1
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    import docker

    client = docker.from_env()
    image = a.image or os.environ.get("GPUHUB_NOTEBOOK_IMAGE", "gpuhub/notebook:latest")
    helper = client.containers.create(
        image,
        ["true"],
        user="0",
        network_disabled=True,
        volumes={courses.volume_name(course.name): {"bind": "/course", "mode": "rw"}},
    )
    try:
        helper.put_archive("/course", buf.getvalue())
    finally:
        helper.remove(force=True)
    return f"published {count} file(s) from {root} to {courses.volume_name(course.name)}"


def cmd_link(hub: Hub, a) -> str:
    _, course = hub.course(a.name)
    if not course.git:
        raise CLIError(f"course {a.name} is a volume course: its material is in every student's ~/courses/{a.name}/")
    if ".." in Path(a.path).parts or a.path.startswith("/"):
        raise CLIError(f"{a.path!r} must be a path inside the course")
    target = f"courses/{course.name}"
    query = urlencode(
        {"repo": course.git, "branch": course.branch, "targetPath": target, "urlpath": f"lab/tree/{target}/{a.path}"},
        quote_via=quote,
    )
    return f"{hub.url}/hub/user-redirect/git-pull?{query}"


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line too (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"gpuhub: error: {message} (see {self.prog} --help)\n")


def common_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """--url/--token and --json, also accepted after the command (`gpuhub gpus --json`).

    SUPPRESS: a subcommand that is not given them keeps the top level's values."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=argparse.SUPPRESS, help="the hub (default: $GPUHUB_URL)")
    connection.add_argument("--token", default=argparse.SUPPRESS, help="an API token (default: $GPUHUB_TOKEN)")
    output = argparse.ArgumentParser(add_help=False, parents=[connection])
    output.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="the hub's JSON, for scripts")
    return connection, output


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="gpuhub", description="gpuhub: GPUs, queue, quotas, usage, courses and SSH")
    p.add_argument("--url", default=os.environ.get("GPUHUB_URL", "http://localhost:8000"))
    p.add_argument("--token", default=os.environ.get("GPUHUB_TOKEN", ""))
    p.set_defaults(json=False)
    connection, output = common_options()
    sub = p.add_subparsers(dest="area", required=True, metavar="COMMAND")
    cli_admin.add_parsers(sub, output)
    course = sub.add_parser("course", help="courses: material every enrolled student receives")
    cs = course.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def command(name: str, func, help_text: str) -> argparse.ArgumentParser:
        s = cs.add_parser(name, parents=[connection], help=help_text)
        s.set_defaults(func=func)
        return s

    c = command("create", cmd_create, "create a course")
    c.add_argument("name")
    c.add_argument("--title", default="")
    c.add_argument("--git", help="repository URL the material is pulled from")
    c.add_argument("--branch", default="main")
    c.add_argument("--volume", action="store_true", help="material lives in the course volume (see publish)")
    c.add_argument("--instructor", action="append", default=[], help="instructor user name (repeatable)")
    c.add_argument("--instructor-group", action="append", default=[], help="group whose members instruct")
    c.add_argument("--data", action="store_true", help="mount the course's data volume read-only for students")
    c.add_argument("--profile", help="default profile for the course's students")
    command("show", cmd_show, "show a course").add_argument("name")
    s = command("delete", cmd_delete, "delete a course")
    s.add_argument("name")
    s.add_argument("--yes", action="store_true")
    command("list", cmd_list, "list courses")
    for name, func in (("enroll", cmd_enroll), ("drop", lambda hub, a: cmd_enroll(hub, a, drop=True))):
        s = command(name, func, f"{name} students")
        s.add_argument("name")
        s.add_argument("users", nargs="+")
    s = command("publish", cmd_publish, "copy local material into a volume course")
    s.add_argument("name")
    s.add_argument("path")
    s.add_argument("--image", help="image for the copy helper (default: GPUHUB_NOTEBOOK_IMAGE)")
    s = command("link", cmd_link, "an 'open in gpuhub' link to a file of a git course")
    s.add_argument("name")
    s.add_argument("path", nargs="?", default="")
    cli_ssh.add_parser(sub, connection)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "csv", False) and args.json:
        print("gpuhub: error: give --csv or --json, not both", file=sys.stderr)
        return 2
    try:
        out = args.func(Hub(args.url, args.token), args)
        if out:
            print(out)
        return 0
    except (CLIError, courses.CourseError) as e:
        print(f"gpuhub: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # e.g. Docker unreachable during publish: still one line
        print(f"gpuhub: error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
