"""The demo's SMTP sink: accepts every message on a loopback port and keeps it as a file.

    python scripts/demo_smtp_sink.py --port 2525 --dir /var/tmp/pi-cicd-demo/mail

Each message becomes ``DIR/NNNN.eml`` (in arrival order) so the demo can show what the agents sent.
Runs until SIGTERM or SIGINT. Loopback only: it relays nothing and checks no password.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class MailDirHandler:
    """aiosmtpd handler: write each message's raw bytes to the next numbered file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        with self._lock:
            number = len(list(self.directory.glob("*.eml"))) + 1
            partial = self.directory / f"{number:04d}.eml.part"
            partial.write_bytes(data)
            # Renamed when complete: a reader never sees half a message.
            partial.rename(self.directory / f"{number:04d}.eml")
        return "250 Message accepted for delivery"


def main() -> int:
    parser = argparse.ArgumentParser(description="Keep every mail sent to 127.0.0.1:PORT as DIR/NNNN.eml.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, dest="directory")
    args = parser.parse_args()
    directory: Path = args.directory
    directory.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    controller = Controller(MailDirHandler(directory), hostname="127.0.0.1", port=args.port)
    controller.start()
    print(f"SMTP sink on 127.0.0.1:{args.port}, mail kept in {directory}", flush=True)
    try:
        stop.wait()
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
