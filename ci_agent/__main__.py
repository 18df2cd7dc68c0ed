import sys

from ci_agent.cli import main

sys.exit(main())
