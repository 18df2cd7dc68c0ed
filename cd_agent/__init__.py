"""The CD agent: poll the registry → pull → swap the app container → health check → roll back."""

import sys

# httpx imports its command-line tool (click and pygments, ~2 MiB resident) whenever they are
# installed, and uvicorn's dependencies install them; the agent never runs that tool. A None entry
# makes the import fail quietly, which httpx expects (it then defines a stub ``httpx.main``).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# loguru imports asyncio (~1.7 MiB resident here) only to find the running event loop for coroutine
# sinks, which the CD agent never adds. Where the agent is the first to import loguru, its loop helpers
# import asyncio when first called instead: same functions, same answers.
if "loguru" not in sys.modules:
    import types

    def _get_running_loop() -> object:
        import asyncio

        return asyncio.get_running_loop()

    def _get_task_loop(task: object) -> object:
        return task.get_loop()  # type: ignore[attr-defined]

    _loop_helpers = types.ModuleType("loguru._asyncio_loop")
    _loop_helpers.get_running_loop = _get_running_loop  # type: ignore[attr-defined]
    _loop_helpers.get_task_loop = _get_task_loop  # type: ignore[attr-defined]
    sys.modules.setdefault("loguru._asyncio_loop", _loop_helpers)
