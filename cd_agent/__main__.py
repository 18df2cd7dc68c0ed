"""``python -m cd_agent``: the same as the ``cd-agent`` console script."""

from __future__ import annotations

import sys

from cd_agent.cli import main

sys.exit(main())
