"""The image's course start hook, on plain directories (it needs neither Docker nor a hub)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images" / "notebook" / "gpuhub"))
import course_sync  # noqa: E402


@pytest.fixture
def dirs(tmp_path):
    source, target = tmp_path / "volume", tmp_path / "home" / "courses" / "ml101"
    (source / "week1").mkdir(parents=True)
    (source / "week1" / "lecture1.ipynb").write_text("lecture 1 v1")
    (source / "syllabus.md").write_text("syllabus")
    return source, target, tmp_path / "home" / ".gpuhub" / "ml101.json"


def test_first_start_copies_everything(dirs):
    source, target, manifest = dirs
    assert course_sync.copy_course(source, target, manifest) == {"new": 2, "updated": 0, "kept": 0}
    assert (target / "week1" / "lecture1.ipynb").read_text() == "lecture 1 v1"


def test_untouched_files_follow_the_instructor_and_new_ones_arrive(dirs):
    source, target, manifest = dirs
    course_sync.copy_course(source, target, manifest)
    (source / "week1" / "lecture1.ipynb").write_text("lecture 1 v2")
    (source / "week2").mkdir()
    (source / "week2" / "lecture2.ipynb").write_text("lecture 2")
    assert course_sync.copy_course(source, target, manifest) == {"new": 1, "updated": 1, "kept": 0}
    assert (target / "week1" / "lecture1.ipynb").read_text() == "lecture 1 v2"


def test_a_students_edit_is_never_overwritten_and_the_update_goes_beside_it_once(dirs):
    source, target, manifest = dirs
    course_sync.copy_course(source, target, manifest)
    (target / "week1" / "lecture1.ipynb").write_text("my answers")
    (source / "week1" / "lecture1.ipynb").write_text("lecture 1 v2")
    counts = course_sync.copy_course(source, target, manifest, today="2026-11-24")
    assert counts == {"new": 0, "updated": 0, "kept": 1}
    assert (target / "week1" / "lecture1.ipynb").read_text() == "my answers"
    assert (target / "week1" / "lecture1.updated-2026-11-24.ipynb").read_text() == "lecture 1 v2"
    note = (target / "README-updates.md").read_text()
    assert "week1/lecture1.ipynb" in note and "lecture1.updated-2026-11-24.ipynb" in note
    # the next start changes nothing and says nothing more
    assert course_sync.copy_course(source, target, manifest, today="2026-11-25") == {"new": 0, "updated": 0, "kept": 0}
    assert (target / "README-updates.md").read_text() == note


def test_an_edit_without_an_instructor_update_is_left_alone(dirs):
    source, target, manifest = dirs
    course_sync.copy_course(source, target, manifest)
    (target / "syllabus.md").write_text("my notes")
    assert course_sync.copy_course(source, target, manifest) == {"new": 0, "updated": 0, "kept": 0}
    assert (target / "syllabus.md").read_text() == "my notes"
    assert not (target / "README-updates.md").exists()


def test_a_failed_sync_leaves_a_note_and_does_not_raise(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(course_sync, "HOME", tmp_path)
    monkeypatch.setattr(course_sync, "STAGING", tmp_path / "nowhere")
    failures = course_sync.run([{"name": "ml101", "git": "git://127.0.0.1:9/none.git", "branch": "main"}], timeout=20)
    assert failures == 1
    assert "could not be updated" in (tmp_path / "courses" / "ml101" / course_sync.PROBLEM).read_text()
    assert "gpuhub-course: ml101: sync failed" in capsys.readouterr().out


def test_the_manifest_records_what_was_delivered(dirs):
    source, target, manifest = dirs
    course_sync.copy_course(source, target, manifest)
    assert set(json.loads(manifest.read_text())) == {"syllabus.md", "week1/lecture1.ipynb"}


def test_a_file_where_the_course_folder_should_be_is_reported_and_other_courses_still_sync(tmp_path, monkeypatch):
    monkeypatch.setattr(course_sync, "HOME", tmp_path)
    monkeypatch.setattr(course_sync, "STAGING", tmp_path / "staging")
    (tmp_path / "staging" / "good").mkdir(parents=True)
    (tmp_path / "staging" / "good" / "a.ipynb").write_text("a")
    (tmp_path / "courses").mkdir()
    (tmp_path / "courses" / "blocked").write_text("a student's file")
    failures = course_sync.run([{"name": "blocked", "volume": True}, {"name": "good", "volume": True}])
    assert failures == 1
    assert (tmp_path / "courses" / "blocked").read_text() == "a student's file"
    assert (tmp_path / "courses" / "good" / "a.ipynb").read_text() == "a"
