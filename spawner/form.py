"""The spawn form: a Jinja template, gpuhub's own or an admin's. Pure (no JupyterHub, no Docker).

Admins replace it by putting a template of the same name in one of
`GPUDockerSpawner.options_form_template_paths`, which are searched before the
templates shipped here; the variables are documented in `templates/gpuhub_form.html`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

#: The templates gpuhub ships.
TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = "gpuhub_form.html"

_environments: dict[tuple[str, ...], jinja2.Environment] = {}


class FormTemplateError(ValueError):
    """The configured spawn-form template cannot be found or rendered; one line naming it."""


def environment(paths: Sequence[str]) -> jinja2.Environment:
    """One Jinja environment (with its template cache) per search path; autoescaping on."""
    key = (*paths, str(TEMPLATES))
    env = _environments.get(key)
    if env is None:
        env = _environments[key] = jinja2.Environment(loader=jinja2.FileSystemLoader(list(key)), autoescape=True)
    return env


def render(
    template: str,
    paths: Sequence[str],
    *,
    profiles: Sequence[dict[str, Any]],
    images: Sequence[str] = (),
    user: str = "",
) -> str:
    try:
        return environment(paths).get_template(template).render(profiles=profiles, images=list(images), user=user)
    except jinja2.TemplateNotFound:
        where = ", ".join([*paths, str(TEMPLATES)])
        raise FormTemplateError(f"spawn form template {template!r} is not in {where}") from None
    except jinja2.TemplateError as e:
        raise FormTemplateError(f"spawn form template {template!r}: {e}") from None
