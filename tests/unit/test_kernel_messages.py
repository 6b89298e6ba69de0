"""harness/kernel.py's Result: how a cell's messages from the kernel's channels are folded (the compose
tests' kernel client and the class-load client both use it)."""

from harness.kernel import Result, execute_request


def msg(kind: str, parent: str, **content) -> dict:
    return {"header": {"msg_type": kind}, "msg_type": kind, "parent_header": {"msg_id": parent}, "content": content}


def test_a_cell_is_done_after_its_reply_and_the_kernel_going_idle_and_others_output_is_not_its():
    result = Result()
    for m in (
        msg("status", "mine", execution_state="busy"),
        msg("stream", "other", name="stdout", text="not mine\n"),
        msg("stream", "mine", name="stdout", text="42\n"),
        msg("stream", "mine", name="stderr", text="warning\n"),
        msg("execute_reply", "mine", status="ok"),
    ):
        result.take(m, "mine")
    assert result.stdout == "42\n" and result.status == "ok" and not result.done
    result.take(msg("status", "other", execution_state="idle"), "mine")
    assert not result.done, "another cell's idle is not this one's"
    result.take(msg("status", "mine", execution_state="idle"), "mine")
    assert result.done and not result.gone and not result.died


def test_a_kernel_killed_mid_cell_is_seen_as_died():
    result = Result()
    result.take(msg("status", "mine", execution_state="busy"), "mine")
    result.take(msg("error", "mine", ename="MemoryError", evalue=""), "mine")
    result.take(msg("status", "", execution_state="restarting"), "mine")
    assert result.gone and result.died and result.error == "MemoryError: " and not result.done


def test_the_execute_request_is_one_for_the_shell_channel():
    request = execute_request("print(1)", "abc")
    assert request["header"]["msg_id"] == "abc" and request["header"]["msg_type"] == "execute_request"
    assert request["channel"] == "shell" and request["content"]["code"] == "print(1)"
