"""The message a bare refusal of the hub's REST API gets (spawner/api_errors.py); the wrapped
JupyterHub handler itself is tested on a real hub in tests/integration/test_hostile_input.py."""

from __future__ import annotations

from spawner import api_errors


def test_the_message_names_the_status_and_the_request():
    assert api_errors.message_for(404, "GET", "/hub/api/authorizations/token/0") == (
        "Not Found: GET /hub/api/authorizations/token/0"
    )
    assert api_errors.message_for(499, "GET", "/x") == "Error: GET /x"


def test_a_long_path_is_cut_to_keep_the_message_one_short_line():
    text = api_errors.message_for(400, "POST", "/hub/api/" + "x" * 500)
    assert text.startswith("Bad Request: POST /hub/api/x") and text.endswith("…") and len(text) < 150


def test_control_characters_a_caller_sent_are_written_as_escapes():
    assert api_errors.one_line("No such user: ann") == "No such user: ann"
    assert api_errors.one_line("No such group: N\nx\r\ty\x00") == "No such group: N\\nx\\r\\ty\\x00"
    assert api_errors.one_line("ünïcode ok") == "ünïcode ok"
