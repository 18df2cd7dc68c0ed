"""A webhook body read within bounds, its signature computed while it streams in.

Strangers can send bodies as large as GitHub's (25 MiB) without knowing the secret, so nothing about
a body may cost more memory than a few hundred KiB until its signature has been checked:

- a body of at most :data:`SMALL_BODY_BYTES` (every ping and almost every push) is read into memory;
- a larger one, or one without ``Content-Length``, needs one of :data:`LARGE_BODY_SLOTS`; it waits
  :data:`SLOT_WAIT_SECONDS` for one, else the answer is 503 with ``Retry-After``. In a slot it is
  spooled: the first :data:`SPOOL_MEMORY_BYTES` in memory, the rest in a temporary file under
  ``STATE_DIR/spool`` that is gone when the request ends;
- the whole body must arrive within :data:`BODY_TIMEOUT_SECONDS` (408), so a slow sender cannot
  hold a slot for long;
- the HMAC is updated chunk by chunk and compared at the end, so a body with a wrong signature is
  never read back from disk. With several repositories there is one HMAC per distinct secret, all
  updated with each chunk as it arrives; the body is still read once.
- a small body (in memory) is signed under each secret only when it is compared, in the order the
  caller asks (``SignedBody.matching(header, first=...)``), stopping at the secret that matches:
  with ten secrets a delivery costs one HMAC when the caller guesses right, and a forgery that
  matches none costs all ten. How long that takes tells a sender only which secret matched, and
  only a sender who holds that secret can make one match.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from anyio import to_thread
from pydantic import SecretStr
from starlette.requests import ClientDisconnect

from ci_agent.errors import WebhookRejected
from ci_agent.signature import PREFIX

MAX_BODY_BYTES = 25 * 1024 * 1024
SMALL_BODY_BYTES = 64 * 1024
LARGE_BODY_SLOTS = 4
SLOT_WAIT_SECONDS = 2.0
BODY_TIMEOUT_SECONDS = 60.0
SPOOL_MEMORY_BYTES = 256 * 1024
RETRY_AFTER_SECONDS = 10


class BodiesBusy(WebhookRejected):
    """503: every slot for a large body is taken; GitHub's *Redeliver* (or any client) may try again."""

    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}

    def __init__(self) -> None:
        super().__init__(503, "too many large deliveries at once; try again later")


@dataclass
class BodyIntake:
    """What every ``POST /webhook`` of one app shares: the slots for large bodies and the spool folder."""

    spool_dir: Path
    slots: int = LARGE_BODY_SLOTS
    _semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.slots)

    async def read(
        self, chunks: AsyncIterator[bytes], declared: int | None, secrets: Sequence[SecretStr] | SecretStr | None
    ) -> SignedBody:
        """The body, and its ``sha256=`` HMAC under each of ``secrets`` (none without a secret)."""
        if secrets is None:
            secrets = ()
        elif isinstance(secrets, SecretStr):
            secrets = (secrets,)
        keys = tuple(secret.get_secret_value().encode() for secret in secrets)
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                if declared is not None and declared <= SMALL_BODY_BYTES:
                    data = await _read_small(chunks)
                    return SignedBody(data, None, [None] * len(keys), keys)
                mac = _Macs([hmac.new(key, digestmod=hashlib.sha256) for key in keys])
                if not await self._acquire():
                    raise BodiesBusy()
                try:
                    return await self._spool(chunks, mac)
                finally:
                    self._semaphore.release()
        except TimeoutError as exc:
            raise WebhookRejected(408, f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s") from exc
        except ClientDisconnect as exc:
            # Nobody is left to read the answer; it is logged like any other refusal.
            raise WebhookRejected(400, "the client went away before the body was complete") from exc

    async def _acquire(self) -> bool:
        try:
            await asyncio.wait_for(self._semaphore.acquire(), SLOT_WAIT_SECONDS)
        except TimeoutError:
            return False
        return True

    async def _spool(self, chunks: AsyncIterator[bytes], mac: _Macs) -> SignedBody:
        # 0700: a body is unverified input, but it may be a private repository's push; nobody else reads it.
        self.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, dir=str(self.spool_dir))
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                _check_size(size)
                mac.update(chunk)
                if size > SPOOL_MEMORY_BYTES:
                    # On disk by now: a write may wait for the SD card, so not on the event loop.
                    await to_thread.run_sync(spool.write, chunk)
                else:
                    spool.write(chunk)
        except BaseException:
            spool.close()
            raise
        return SignedBody(None, spool, list(_digest(mac)), ())


@dataclass
class SignedBody:
    """A body read by :class:`BodyIntake`: in memory, or spooled until :meth:`content` is called."""

    _data: bytes | None
    _spool: IO[bytes] | None
    # One per secret: computed while a spooled body streamed in, else when first compared.
    _signatures: list[str | None]
    _keys: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def signature(self) -> str | None:
        """The signature under the first secret (the only one, with one repository)."""
        return self.signature_at(0) if self._signatures else None

    def signature_at(self, index: int) -> str:
        signature = self._signatures[index]
        if signature is None:
            signature = PREFIX + hmac.new(self._keys[index], self._data or b"", hashlib.sha256).hexdigest()
            self._signatures[index] = signature
        return signature

    def matching(self, header: str, first: int | None = None) -> int | None:
        """The index of the secret whose signature ``header`` is, or ``None``.

        Secrets are tried from ``first`` (a guess, e.g. the secret this webhook used last time), then
        in order, each compared in constant time; a header that matches none is compared with all.
        """
        given = header.strip().lower().encode("ascii", "replace")
        order = list(range(len(self._signatures)))
        if first is not None and 0 <= first < len(order):
            order.remove(first)
            order.insert(0, first)
        for index in order:
            if hmac.compare_digest(self.signature_at(index).encode(), given):
                return index
        return None

    def matches(self, header: str) -> bool:
        """Whether ``header`` is the body's ``X-Hub-Signature-256`` under one of the secrets."""
        return self.matching(header) is not None

    async def content(self) -> bytes:
        if self._data is None and self._spool is not None:
            spool = self._spool
            spool.seek(0)
            self._data = await to_thread.run_sync(spool.read)
            self.close()
        return self._data or b""

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


async def _read_small(chunks: AsyncIterator[bytes]) -> bytes:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        _check_size(len(data))
    return bytes(data)


def _check_size(size: int) -> None:
    # Counted while streaming too: a chunked body has no Content-Length to check up front.
    if size > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MiB")


@dataclass
class _Macs:
    """One running HMAC per secret, fed the same chunks."""

    macs: list[hmac.HMAC]

    def update(self, chunk: bytes) -> None:
        for mac in self.macs:
            mac.update(chunk)


def _digest(mac: _Macs) -> tuple[str, ...]:
    return tuple(PREFIX + one.hexdigest() for one in mac.macs)
