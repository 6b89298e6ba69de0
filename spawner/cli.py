"""gpuhub: the admin and instructor command line. Talks to the hub's REST API with a token.

    export GPUHUB_URL=http://localhost:8000 GPUHUB_TOKEN=<token from /hub/token>
    gpuhub course create ml101 --title "ML 101" --git https://git.example.edu/ml101.git --instructor alice
    gpuhub course enroll ml101 bob carol
    gpuhub course publish ml101 ./material        # volume courses: copy files into the course volume
    gpuhub course link ml101 week1/lecture1.ipynb  # an "open in gpuhub" link (nbgitpuller format)
    gpuhub ssh-config >> ~/.ssh/config             # then: ssh gpuhub-<you> (docs/users.md: SSH)

Bad input exits non-zero with one line and changes nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tarfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlencode

import requests

from . import container, courses

#: The notebook server's uid/gid and account name, as the spawner's defaults give them
#: (`GPUDockerSpawner.notebook_user`, the image's home `GPUDockerSpawner.home_path`).
NOTEBOOK_UID, NOTEBOOK_GID = (int(x) for x in container.DEFAULT_USER.split(":"))
NOTEBOOK_ACCOUNT = PurePosixPath(container.DEFAULT_HOME_PATH).name


class CLIError(Exception):
    pass


class Hub:
    def __init__(self, url: str, token: str):
        if not token:
            raise CLIError("no API token: set GPUHUB_TOKEN or pass --token (create one at <hub>/hub/token)")
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def call(self, method: str, path: str, ok=(200, 201, 204), **kwargs) -> requests.Response:
        try:
            r = self.http.request(method, f"{self.url}/hub/api{path}", timeout=30, **kwargs)
        except requests.RequestException as e:
            raise CLIError(f"cannot reach the hub at {self.url} ({type(e).__name__})") from None
        if r.status_code == 403:
            raise CLIError(f"the token may not do this ({method} {path}: 403)")
        if r.status_code not in ok:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text[:200]
            raise CLIError(f"{method} {path} failed: {r.status_code} {message}")
        return r

    def group(self, course: str) -> dict | None:
        r = self.call("GET", f"/groups/{courses.GROUP_PREFIX}{course}", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    def course(self, name: str) -> tuple[dict, courses.Course]:
        group = self.group(courses.check_name(name))
        if group is None or courses.PROPERTY not in (group.get("properties") or {}):
            raise CLIError(f"unknown course {name!r}")
        return group, courses.parse(group["name"], group["properties"][courses.PROPERTY])

    def check_users(self, users: list[str]) -> None:
        for user in users:
            if not courses.USER_NAME.match(user):
                raise CLIError(f"{user!r} is not a valid user name")
            if self.call("GET", f"/users/{user}", ok=(200, 404)).status_code == 404:
                raise CLIError(f"unknown user {user!r}")


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


def cmd_ssh_config(hub: Hub, a) -> str:
    """An ~/.ssh/config block for the token's owner: OpenSSH through the proxy to jupyter-sshd-proxy."""
    user = hub.call("GET", "/user").json()["name"]
    if a.server and not re.match(r"^[A-Za-z0-9._-]{1,64}$", a.server):
        raise CLIError(f"{a.server!r} is not a valid server name")
    scheme = "wss" if hub.url.startswith("https://") else "ws"
    host = hub.url.split("://", 1)[1]
    path = f"/user/{quote(user, safe='@~')}/{quote(a.server, safe='@~') + '/' if a.server else ''}sshd/"
    alias = a.host or f"gpuhub-{user}" + (f"-{a.server}" if a.server else "")
    return "\n".join(
        [
            f"Host {alias}",
            f"    User {NOTEBOOK_ACCOUNT}",
            "    # The hub token authenticates the tunnel; keep it in the environment, not in this file.",
            f'    ProxyCommand websocat --binary -H="Authorization: token ${{GPUHUB_TOKEN}}" asyncstdio: {scheme}://{host}{path}',
        ]
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuhub", description="gpuhub admin and instructor commands")
    p.add_argument("--url", default=os.environ.get("GPUHUB_URL", "http://localhost:8000"))
    p.add_argument("--token", default=os.environ.get("GPUHUB_TOKEN", ""))
    sub = p.add_subparsers(dest="area", required=True)
    course = sub.add_parser("course", help="courses: material every enrolled student receives")
    cs = course.add_subparsers(dest="command", required=True)
    c = cs.add_parser("create", help="create a course")
    c.add_argument("name")
    c.add_argument("--title", default="")
    c.add_argument("--git", help="repository URL the material is pulled from")
    c.add_argument("--branch", default="main")
    c.add_argument("--volume", action="store_true", help="material lives in the course volume (see publish)")
    c.add_argument("--instructor", action="append", default=[], help="instructor user name (repeatable)")
    c.add_argument("--instructor-group", action="append", default=[], help="group whose members instruct")
    c.add_argument("--data", action="store_true", help="mount the course's data volume read-only for students")
    c.add_argument("--profile", help="default profile for the course's students")
    for name, help_text in (("show", "show a course"), ("delete", "delete a course")):
        s = cs.add_parser(name, help=help_text)
        s.add_argument("name")
        if name == "delete":
            s.add_argument("--yes", action="store_true")
    cs.add_parser("list", help="list courses")
    for name in ("enroll", "drop"):
        s = cs.add_parser(name, help=f"{name} students")
        s.add_argument("name")
        s.add_argument("users", nargs="+")
    s = cs.add_parser("publish", help="copy local material into a volume course")
    s.add_argument("name")
    s.add_argument("path")
    s.add_argument("--image", help="image for the copy helper (default: GPUHUB_NOTEBOOK_IMAGE)")
    ssh = sub.add_parser("ssh-config", help="print an ~/.ssh/config block for your server (jupyter-sshd-proxy)")
    ssh.set_defaults(command="ssh-config")
    ssh.add_argument("--server", default="", help="a named server (default: the default server)")
    ssh.add_argument("--host", default="", help="the Host alias (default: gpuhub-<user>)")
    s = cs.add_parser("link", help="an 'open in gpuhub' link to a file of a git course")
    s.add_argument("name")
    s.add_argument("path", nargs="?", default="")
    return p


COMMANDS = {
    "create": cmd_create,
    "show": cmd_show,
    "list": cmd_list,
    "delete": cmd_delete,
    "enroll": cmd_enroll,
    "drop": lambda hub, a: cmd_enroll(hub, a, drop=True),
    "publish": cmd_publish,
    "link": cmd_link,
    "ssh-config": cmd_ssh_config,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        print(COMMANDS[args.command](Hub(args.url, args.token), args))
        return 0
    except (CLIError, courses.CourseError) as e:
        print(f"gpuhub: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # e.g. Docker unreachable during publish: still one line
        print(f"gpuhub: error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
