"""The CD agent: poll the registry → pull → swap the app container → health check → roll back."""

import sys

# httpx imports its command-line tool (click and pygments, ~2 MiB resident) whenever they are
# installed, and uvicorn's dependencies install them; the agent never runs that tool. A None entry
# makes the import fail quietly, which httpx expects (it then defines a stub ``httpx.main``).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
