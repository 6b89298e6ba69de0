import pytest

from spawner import form


def rows(**gpu):
    return [
        {"slug": "cpu", "display_name": "CPU only", "description": "", "checked": False, "gpu": None},
        {
            "slug": "gpu",
            "display_name": "1 GPU <b>",
            "description": "An H100 & friends",
            "checked": True,
            "gpu": {"label": "GPU", "free": 3, "total": 4, "waiting": 0, **gpu},
        },
    ]


def render(paths=(), **kwargs):
    return form.render(form.DEFAULT_TEMPLATE, paths, profiles=kwargs.pop("profiles", rows()), **kwargs)


def test_the_shipped_form_offers_each_profile_with_live_availability():
    html = render()
    assert html.count('name="profile"') == 2
    assert 'value="gpu" checked' in html
    assert "3 of 4 free" in html and "no GPU" in html
    assert "queue" not in html.replace("gpuhub-queue-hint {", "")  # no hint while devices are free


def test_all_busy_shows_the_queue_hint_with_how_many_wait():
    html = render(profiles=rows(free=0, waiting=3))
    assert "0 of 4 free" in html
    assert "you will wait in the queue behind 3 servers" in html
    assert "behind 1 server," in render(profiles=rows(free=0, waiting=1))


def test_names_and_descriptions_are_escaped():
    html = render()
    assert "1 GPU &lt;b&gt;" in html and "An H100 &amp; friends" in html


def test_images_are_offered_only_when_the_admin_allows_several():
    assert 'name="image"' not in render()
    html = render(images=["lab/a:1", "lab/b:2"])
    assert html.count("<option") == 2 and 'name="image"' in html


def test_an_admin_template_of_the_same_name_replaces_the_form(tmp_path):
    (tmp_path / form.DEFAULT_TEMPLATE).write_text(
        "{% for p in profiles %}<input name=profile value={{ p.slug }}>{{ user }}{% endfor %}"
    )
    assert render([str(tmp_path)], user="ann") == "<input name=profile value=cpu>ann<input name=profile value=gpu>ann"
    # Another search path does not see it: the environment is per path list.
    assert "form-check" in render()


@pytest.mark.parametrize("text, why", [("{% for %}", "gpuhub_form.html"), (None, "is not in")])
def test_a_broken_or_missing_template_is_one_line_naming_it(tmp_path, text, why):
    name = "mine.html"
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(form.FormTemplateError, match=why if text is None else name) as e:
        form.render(name, [str(tmp_path)], profiles=rows())
    assert "\n" not in str(e.value)
