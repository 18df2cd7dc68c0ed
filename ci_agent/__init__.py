"""The CI agent: GitHub push webhook → checkout → test → build → push the next semver tag."""

import sys

# As in cd_agent/__init__.py: httpx imports its command-line tool (click, pygments, rich: ~2 MiB
# resident, ~30-90 ms at start) whenever they are installed, and the agent never runs it. A None entry makes that import
# fail quietly, which httpx expects (it then defines a stub ``httpx.main``).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
