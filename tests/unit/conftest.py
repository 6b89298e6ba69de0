"""Async unit tests run on their own event loop, in a thread of their own.

The integration tests that run before them in one pytest session leave an event loop running on
the main thread (Playwright's sync API keeps one for the session's browser), so a coroutine test
cannot start a loop there. A fresh thread has no running loop.
"""

import asyncio
import inspect
import threading

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    failure: list[BaseException] = []

    def run():
        try:
            asyncio.run(pyfuncitem.obj(**kwargs))
        except BaseException as e:  # handed to pytest on the main thread
            failure.append(e)

    thread = threading.Thread(target=run, name=f"test-{pyfuncitem.name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return True


@pytest.fixture(scope="package", autouse=True)
def a_loop_runs_on_the_main_thread():
    """Make a unit run alone look like the full run: a loop is running on the main thread.

    Package scope: the loop is gone again before any test outside tests/unit runs in the same session.

    Without this a test that calls asyncio.run() itself passes in `pytest tests/unit` and fails
    only in CI, after the browser tests (that is how test_home_size first broke CI).
    """
    if asyncio.events._get_running_loop() is not None:
        yield
        return
    loop = asyncio.new_event_loop()
    asyncio.events._set_running_loop(loop)
    try:
        yield
    finally:
        asyncio.events._set_running_loop(None)
        loop.close()
