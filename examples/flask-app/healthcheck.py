"""The image's HEALTHCHECK: exit 0 when /healthz answers 200, else 1 with one line saying why.

Docker keeps that line in the container's health log, and the CD agent puts it in its email.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

URL = "http://127.0.0.1:8000/healthz"


def main() -> int | str:
    try:
        with urllib.request.urlopen(URL, timeout=2) as answer:  # noqa: S310 - a fixed loopback URL
            print(f"{URL}: HTTP {answer.status}")
            return 0
    except urllib.error.HTTPError as exc:
        return f"{URL}: HTTP {exc.code} {exc.read().decode(errors='replace').strip()}"
    except OSError as exc:
        return f"{URL}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
