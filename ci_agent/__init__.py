"""The CI agent: GitHub push webhook → checkout → test → build → push the next semver tag."""

import sys

# As in cd_agent/__init__.py: httpx imports its command-line tool (click, pygments, rich) whenever
# they are installed; the agent never runs it, and `ci-agent run` pays ~30-90 ms for it at start.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
