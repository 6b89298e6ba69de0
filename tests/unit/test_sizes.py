import pytest

from spawner.sizes import parse_size


@pytest.mark.parametrize("text, expected", [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5g", int(1.5 * 2**30))])
def test_sizes_use_dockers_units(text, expected):
    assert parse_size(text) == expected


def test_a_bare_number_is_bytes_and_spaces_around_it_are_ignored():
    assert parse_size(" 4096 ") == 4096


@pytest.mark.parametrize("text", ["", "G", "8GB", "-1G", "8 G", "eight"])
def test_text_that_is_not_a_size_is_refused(text):
    with pytest.raises(ValueError, match="512M or 8G"):
        parse_size(text)
