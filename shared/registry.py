"""Image references and a small Docker Registry HTTP API v2 / OCI distribution client.

This is the one module that talks to a registry, so it is the one place where httpx's errors become
the project's own (``shared.errors``)::

    httpx.TimeoutException, httpx.TransportError, 5xx   -> RegistryUnavailable (retry_after if given)
    429                                                 -> RateLimited (retry_after from Retry-After)
    401 after the auth dance, 403, token endpoint "no"  -> RegistryAuthError (registry + user, never the password)
    404                                                 -> RegistryNotFound (or [] / None where that is an answer)
    a body that is not the JSON we asked for            -> RegistryUnavailable (a cut-off answer is worth retrying)
    a page link to another host                         -> RegistryLinkRefused (names the host)

Whom it trusts: the registry's own origin (scheme, host, port of ``CD_IMAGE``'s registry), and the token
realm named in a 401 challenge that came from that origin (``auth.docker.io`` for Docker Hub). The
credentials go to those two and nowhere else: a ``Link`` to another origin is refused, a 401 from a
host a redirect led to is not answered, and they never travel over plain http except to this machine.
``tags/list`` stops after ``MAX_TAG_PAGES`` pages or ``MAX_TAGS`` tags with a warning, so a registry
cannot keep the agent paging forever.

Its one write is ``put_index``, the CI agent's multi-platform release (``ci_agent/multiplatform.py``): the
images are pushed by the build engine, the index naming them by digest is ``PUT`` here, with a token for
``pull,push`` where the registry hands out tokens.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
from loguru import logger
from pydantic import SecretStr

from shared.errors import (
    RateLimited,
    RegistryAuthError,
    RegistryError,
    RegistryLinkRefused,
    RegistryNotFound,
    RegistryUnavailable,
)
from shared.platforms import UNKNOWN as UNKNOWN_PLATFORM
from shared.platforms import Platform, platform

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "https://registry-1.docker.io"
# Names people write for Docker Hub that all mean the same registry.
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

# The reference grammar of github.com/distribution/reference, split into the parts we check one by one
# so each mistake gets its own message.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]+)?"
)
_MAX_NAME_LENGTH = 255

# tags/list stops after this many pages or tags (a real repository has far fewer; Docker Hub pages
# are 100 tags), so a registry cannot keep the agent paging forever. What was read is kept.
MAX_TAG_PAGES = 100
MAX_TAGS = 10_000


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives: ``registry`` ("docker.io" for Docker Hub), ``repository`` ("library/x" for
    single names), and optionally a ``tag`` and/or a ``digest`` ("sha256:...")."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_url(self) -> str:
        """Base URL of the registry API: plain http only for registries on this machine."""
        if self.registry == DOCKER_HUB:
            return DOCKER_HUB_API
        scheme = "http" if is_loopback(self.registry) else "https"
        return f"{scheme}://{self.registry}"

    @property
    def name(self) -> str:
        """``registry/repository`` without tag, as ``docker push`` takes it."""
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> str:
        return f"{self.name}:{tag}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def is_loopback(registry: str) -> bool:
    """Whether a registry host (with optional port) is this machine: 127.0.0.0/8, ::1 or localhost."""
    host = registry
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_image_ref(text: str) -> ImageRef:
    """Parse ``[registry/]repository[:tag][@digest]`` the way ``docker pull`` does.

    The first path part is a registry when it has a ``.`` or a ``:`` or is ``localhost``; otherwise the
    image is on Docker Hub, where a single name means ``library/NAME``.
    """
    original = text
    text = text.strip()
    if not text:
        raise ValueError("image reference is empty")
    if "://" in text:
        raise ValueError(f"image reference {original!r} must not have a URL scheme; write e.g. 'ghcr.io/owner/app'")
    if any(char.isspace() for char in text):
        raise ValueError(f"image reference {original!r} contains whitespace")

    digest: str | None = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"image reference {original!r} has an invalid digest {digest!r}; expected 'sha256:<hex>'")

    registry = DOCKER_HUB
    first, slash, rest = text.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            raise ValueError(f"image reference {original!r} has an invalid registry host {first!r}")
        registry = DOCKER_HUB if first.lower() in DOCKER_HUB_ALIASES else first
        text = rest

    tag: str | None = None
    path, colon, maybe_tag = text.rpartition(":")
    if colon:
        tag, text = maybe_tag, path
        if not _TAG.fullmatch(tag):
            raise ValueError(
                f"image reference {original!r} has an invalid tag {tag!r}; tags are up to 128 letters, digits, "
                "'_', '.' or '-' and do not start with '.' or '-'"
            )

    if not text:
        raise ValueError(f"image reference {original!r} has no repository name")
    for component in text.split("/"):
        if _COMPONENT.fullmatch(component):
            continue
        if component and _COMPONENT.fullmatch(component.lower()):
            raise ValueError(f"image reference {original!r}: repository names must be lowercase ({component!r})")
        raise ValueError(
            f"image reference {original!r} has an invalid repository part {component!r}; use lowercase letters, "
            "digits and single '.', '_' or '-' separators"
        )
    repository = text
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > _MAX_NAME_LENGTH:
        raise ValueError(f"image reference {original!r} is longer than {_MAX_NAME_LENGTH} characters")
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


@dataclass(frozen=True)
class RateLimit:
    """Docker Hub's pull allowance from ``ratelimit-limit`` / ``ratelimit-remaining`` ("100;w=21600")."""

    limit: int
    remaining: int
    window_seconds: int | None = None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    limit_text = headers.get("ratelimit-limit")
    remaining_text = headers.get("ratelimit-remaining")
    if limit_text is None or remaining_text is None:
        return None
    try:
        limit, _, limit_params = limit_text.partition(";")
        remaining, _, _ = remaining_text.partition(";")
        window: int | None = None
        for param in limit_params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "w":
                window = int(value)
        return RateLimit(limit=int(limit), remaining=int(remaining), window_seconds=window)
    except ValueError:
        return None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    when = parse_http_date(value)
    if when is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date (``Date``, ``Retry-After``) as an aware datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: scheme ("bearer" or "basic") and its parameters."""

    scheme: str
    params: Mapping[str, str]


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


def parse_challenge(header: str | None) -> Challenge | None:
    """``Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="..."`` -> Challenge."""
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        params[match.group(1).lower()] = quoted.replace('\\"', '"') if quoted is not None else bare
    return Challenge(scheme=scheme.lower(), params=params)


@dataclass
class _Token:
    value: str
    expires_at: float


@dataclass(frozen=True)
class IndexEntry:
    """One image of a multi-platform release: its manifest (already in the repository) and its platform."""

    digest: str
    size: int
    media_type: str
    platform: Platform

    def descriptor(self) -> dict[str, Any]:
        fields = {"os": self.platform.os, "architecture": self.platform.architecture}
        if self.platform.variant:
            fields["variant"] = self.platform.variant
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, "platform": fields}


def index_manifest(entries: Sequence[IndexEntry]) -> bytes:
    """The OCI image index of ``entries``, as the bytes that are ``PUT`` (their sha256 is its digest)."""
    if not entries:
        raise ValueError("an image index needs at least one image")
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry.descriptor() for entry in entries]}
    return json.dumps(body, separators=(",", ":")).encode()


class RegistryClient:
    """Reads tags, digests and labels of one repository; handles Bearer-token and Basic auth.

    Not thread-safe: give each thread its own client.
    """

    def __init__(
        self,
        ref: ImageRef,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref = ref
        self.rate_limit: RateLimit | None = None
        self._username = username
        self._password = password
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._use_basic = False
        # digest -> manifest media type, as the HEAD of manifest_digest saw it
        self._media_types: dict[str, str] = {}
        self._origin = httpx.URL(ref.api_url)
        self._http = httpx.Client(
            base_url=ref.api_url, transport=transport, timeout=timeout, follow_redirects=True
        )
        self._log = logger.bind(registry=ref.registry, repository=ref.repository)

    # -- public API -------------------------------------------------------------------------------

    def list_tags(self, *, page_size: int = 100) -> list[str]:
        """Every tag of the repository, following ``Link: <...>; rel="next"`` pages on the registry's own origin,
        at most ``MAX_TAG_PAGES`` pages / ``MAX_TAGS`` tags (then a warning, and the tags read so far).

        An unknown repository has no tags yet: the first release creates it. A link to another origin
        raises ``RegistryLinkRefused``.
        """
        url: str | None = f"/v2/{self.ref.repository}/tags/list?n={page_size}"
        tags: list[str] = []
        seen: set[str] = set()
        pages = 0
        while url is not None:
            if pages >= MAX_TAG_PAGES or len(tags) >= MAX_TAGS:
                self._log.warning(
                    "registry {} still had more tags of {} after {} pages ({} tags); stopped there "
                    "(limits: {} pages, {} tags)",
                    self.ref.registry, self.ref.name, pages, len(tags), MAX_TAG_PAGES, MAX_TAGS,
                )
                break
            if url in seen:
                raise RegistryError(f"registry {self.ref.registry} sent a tag page link that loops back to {url}")
            seen.add(url)
            try:
                response = self._request("GET", url, what=f"list the tags of {self.ref.name}")
            except RegistryNotFound:
                return []
            pages += 1
            body = self._json(response, f"list the tags of {self.ref.name}")
            page = body.get("tags") if isinstance(body, dict) else None
            if page is None and isinstance(body, dict) and "tags" in body:
                page = []
            if not isinstance(page, list) or not all(isinstance(tag, str) for tag in page):
                raise RegistryError(
                    f"registry {self.ref.registry} answered tags/list for {self.ref.name} without a tag list"
                )
            tags.extend(page[: MAX_TAGS - len(tags)])
            url = self._next_link(response)
        return tags

    def manifest_digest(self, tag: str) -> str | None:
        """The manifest digest of ``tag`` (what ``docker push`` printed), or None when the tag does not exist.

        A HEAD request, which Docker Hub does not count against the pull limit.
        """
        what = f"read the digest of {self.ref.with_tag(tag)}"
        path = f"/v2/{self.ref.repository}/manifests/{tag}"
        try:
            response = self._request("HEAD", path, what=what, headers={"Accept": MANIFEST_ACCEPT})
        except RegistryNotFound:
            return None
        digest: str | None = response.headers.get("docker-content-digest")
        if digest:
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if media_type:
                self._media_types[digest] = media_type
            return digest
        # Some registries leave the header out; the digest is the sha256 of the manifest bytes.
        try:
            response = self._request("GET", path, what=what, headers={"Accept": MANIFEST_ACCEPT})
        except RegistryNotFound:
            return None
        digest = response.headers.get("docker-content-digest")
        return digest or "sha256:" + hashlib.sha256(response.content).hexdigest()

    def image_labels(self, tag: str) -> dict[str, str]:
        """The labels (``LABEL`` lines, OCI annotations of the build) of ``tag``'s image config.

        For a multi-platform image, the first linux image is read. Raises RegistryNotFound when the tag does not exist.
        """
        what = f"read the labels of {self.ref.with_tag(tag)}"
        manifest = self._manifest(tag, what)
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            manifest = self._manifest(self._linux_manifest_digest(manifest, tag), what)
        config = manifest.get("config")
        digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(digest, str):
            raise RegistryError(f"the manifest of {self.ref.with_tag(tag)} names no config blob")
        response = self._request("GET", f"/v2/{self.ref.repository}/blobs/{digest}", what=what)
        blob = self._json(response, what)
        inner = blob.get("config") if isinstance(blob, dict) else None
        labels = inner.get("Labels") if isinstance(inner, dict) else None
        if not isinstance(labels, dict):
            return {}
        return {str(key): str(value) for key, value in labels.items()}

    def platforms(self, reference: str) -> list[Platform] | None:
        """The platforms an image index at ``reference`` (a tag or a digest) offers, buildx's attestation
        entries left out; None for a single image, whose platform only its config blob says (not read:
        the check then costs no blob download, and the engine decides).

        Raises RegistryNotFound when there is no such manifest. One manifest GET, none when
        ``manifest_digest`` already saw that this digest is a single image.
        """
        if self._media_types.get(reference) in IMAGE_MANIFEST_TYPES:
            return None
        shown = f"{self.ref.name}@{reference}" if ":" in reference else self.ref.with_tag(reference)
        manifest = self._manifest(reference, f"read the platforms of {shown}")
        if manifest.get("mediaType") not in INDEX_TYPES and "manifests" not in manifest:
            return None
        entries = manifest.get("manifests")
        offered = []
        for entry in entries if isinstance(entries, list) else []:
            fields = entry.get("platform") if isinstance(entry, dict) else None
            if not isinstance(fields, dict):
                continue
            os, architecture = fields.get("os"), fields.get("architecture")
            if isinstance(os, str) and isinstance(architecture, str) and os != UNKNOWN_PLATFORM:
                variant = fields.get("variant")
                offered.append(platform(os, architecture, variant if isinstance(variant, str) else ""))
        return offered

    def entry(self, digest: str, platform: Platform) -> IndexEntry:
        """The index entry of the image manifest ``digest`` (its size and media type, from a HEAD)."""
        what = f"read the manifest {self.ref.name}@{digest}"
        response = self._request(
            "HEAD", f"/v2/{self.ref.repository}/manifests/{digest}", what=what, headers={"Accept": MANIFEST_ACCEPT}
        )
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        length = response.headers.get("content-length", "")
        if media_type not in IMAGE_MANIFEST_TYPES or not length.isdigit():
            raise RegistryError(
                f"cannot {what}: the registry answered {media_type or 'no media type'} and "
                f"{length or 'no'} length, not an image manifest"
            )
        return IndexEntry(digest=digest, size=int(length), media_type=media_type, platform=platform)

    def put_index(self, tag: str, entries: Sequence[IndexEntry]) -> str:
        """Tag an OCI image index of ``entries`` (manifests already in this repository) as ``tag``; returns
        the index's digest. Needs push rights; the registry refuses an index naming a manifest it lacks."""
        body = index_manifest(entries)
        what = f"tag the image index of {self.ref.with_tag(tag)}"
        self._request(
            "PUT", f"/v2/{self.ref.repository}/manifests/{tag}", what=what, headers={"Content-Type": OCI_INDEX},
            content=body, push=True,
        )
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def server_date(self) -> datetime | None:
        """The registry's clock: the ``Date`` header of its ``/v2/`` answer (401 included), None without one.

        For ``doctor``'s clock check; no credentials are sent (none are needed to read a header).
        """
        return parse_http_date(self._send("GET", "/v2/", None, None).headers.get("date"))

    def check_push(self) -> bool:
        """Whether these credentials may push to the repository, without pushing anything: a blob upload
        session is started (``POST /v2/NAME/blobs/uploads/``, push scope) and cancelled (``DELETE`` of its
        ``Location``). No blob, manifest or tag is written; an upload never finished holds nothing.

        Raises ``RegistryAuthError`` when refused; returns False when the session could not be cancelled
        (the registry drops unfinished uploads itself, after a while).
        """
        what = f"start an upload to {self.ref.name} (a push check; nothing is pushed)"
        response = self._request("POST", f"/v2/{self.ref.repository}/blobs/uploads/", what=what, push=True)
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"registry {self.ref.registry} started an upload to {self.ref.name} without a Location")
        if not self._same_origin(location):
            return False  # an upload on another host (a storage redirect): it expires there on its own
        try:
            self._request("DELETE", location, what=f"cancel the upload just started on {self.ref.name}", push=True)
        except RegistryError:
            return False
        return True

    def delete_tags(self, tags: Sequence[str], *, note: str) -> None:
        """Remove ``tags`` from the repository and nothing else: the manifests they pointed at stay.

        The distribution API deletes manifests by digest only (``DELETE`` of a tag answers 400), and deleting
        a manifest drops every tag on it. So each tag is first moved onto a throwaway empty image index made
        for this call (``note`` goes into its annotation and makes it unique), which is then deleted. A
        registry that refuses deletion (``storage.delete.enabled`` off: 405 UNSUPPORTED; or credentials
        without delete rights) is found out before any tag moves, by deleting that index before it exists
        (a 404 means deletion works): it raises ``RegistryError`` with the tags untouched.
        """
        if not tags:
            return
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
             "annotations": {"org.opencontainers.image.description": f"pi-cicd: removes tags ({note})"}},
            separators=(",", ":"),
        ).encode()
        throwaway = "sha256:" + hashlib.sha256(body).hexdigest()
        url = f"/v2/{self.ref.repository}/manifests/{throwaway}"
        with contextlib.suppress(RegistryNotFound):  # 404: deletion is allowed (202: left by an interrupted call)
            self._request("DELETE", url, what=f"delete the throwaway index {throwaway} (a probe)", delete=True)
        for tag in tags:
            self._request(
                "PUT", f"/v2/{self.ref.repository}/manifests/{tag}", what=f"move {self.ref.with_tag(tag)} for removal",
                headers={"Content-Type": OCI_INDEX}, content=body, push=True,
            )
        self._request("DELETE", url, what=f"delete the index {throwaway} holding {', '.join(tags)}", delete=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- manifests --------------------------------------------------------------------------------

    def _manifest(self, reference: str, what: str) -> dict[str, Any]:
        response = self._request(
            "GET", f"/v2/{self.ref.repository}/manifests/{reference}", what=what, headers={"Accept": MANIFEST_ACCEPT}
        )
        body = self._json(response, what)
        if not isinstance(body, dict):
            raise RegistryError(f"registry {self.ref.registry} answered a manifest that is not a JSON object ({what})")
        media_type = body.get("mediaType") or response.headers.get("content-type", "").split(";")[0]
        if media_type and media_type not in INDEX_TYPES | IMAGE_MANIFEST_TYPES and "config" not in body:
            raise RegistryError(f"cannot {what}: unsupported manifest type {media_type!r}")
        return body

    def _linux_manifest_digest(self, index: dict[str, Any], tag: str) -> str:
        entries = index.get("manifests")
        for entry in entries if isinstance(entries, list) else []:
            platform = entry.get("platform") if isinstance(entry, dict) else None
            if isinstance(platform, dict) and platform.get("os") == "linux" and isinstance(entry.get("digest"), str):
                return str(entry["digest"])
        raise RegistryError(f"the image index of {self.ref.with_tag(tag)} has no linux image")

    # -- requests, auth and error mapping ---------------------------------------------------------

    def _scope(self, push: bool = False, delete: bool = False) -> str:
        actions = "pull,push,delete" if delete else "pull,push" if push else "pull"
        return f"repository:{self.ref.repository}:{actions}"

    def _request(
        self, method: str, url: str, *, what: str, headers: Mapping[str, str] | None = None,
        content: bytes | None = None, push: bool = False, delete: bool = False,
    ) -> httpx.Response:
        """Send one request, answering at most one auth challenge, and map the outcome to our errors."""
        scope = self._scope(push, delete)
        response = self._send(method, url, headers, self._auth_header(scope), content)
        # Only the registry's own challenge is answered: a 401 from a host a redirect led to could name
        # any realm, and answering it would hand that host the credentials.
        if response.status_code == 401 and self._same_origin(str(response.url)):
            challenge = parse_challenge(response.headers.get("www-authenticate"))
            authorization = self._answer_challenge(challenge, what, scope)
            if authorization is not None:
                response = self._send(method, url, headers, authorization, content)
        if response.status_code == 401 and not self._same_origin(str(response.url)):
            raise RegistryAuthError(
                f"cannot {what}: {method} {url} was redirected to {_origin_text(response.url)}, which asked for "
                f"credentials; they are only sent to registry {self.ref.registry} and its token realm"
            )
        self._check(response, what)
        return response

    def _send(
        self, method: str, url: str, headers: Mapping[str, str] | None, authorization: str | None,
        content: bytes | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if authorization is not None and self._same_origin(url):
            all_headers["Authorization"] = authorization
        try:
            response = self._http.request(method, url, headers=all_headers, content=content)
        except httpx.TimeoutException as exc:
            raise RegistryUnavailable(
                f"registry {self.ref.registry} did not answer {method} {url} in time: {exc}"
            ) from exc
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"cannot reach registry {self.ref.registry} ({method} {url}): {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise RegistryError(f"request {method} {url} to registry {self.ref.registry} failed: {exc}") from exc
        limit = parse_rate_limit(response.headers)
        if limit is not None:
            self.rate_limit = limit
        self._log.debug("{} {} -> {}", method, url, response.status_code)
        return response

    def _same_origin(self, url: str) -> bool:
        target = self._origin.join(url)
        return (target.scheme, target.host, target.port) == (self._origin.scheme, self._origin.host, self._origin.port)

    def _auth_header(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is not None and token.expires_at > self._clock():
            return f"Bearer {token.value}"
        if self._use_basic and self._credentials is not None:
            return _basic(*self._credentials)
        return None

    @property
    def _credentials(self) -> tuple[str, str] | None:
        if self._username and self._password is not None:
            return self._username, self._password.get_secret_value()
        return None

    def _answer_challenge(self, challenge: Challenge | None, what: str, scope: str) -> str | None:
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if self._credentials is None or self._use_basic:
                return None  # nothing (new) to offer: _check reports the 401
            self._use_basic = True
            return _basic(*self._credentials)
        if challenge.scheme == "bearer":
            # A cached token the registry refused may have been revoked early: ask for a fresh one, once.
            self._tokens.pop(scope, None)
            return f"Bearer {self._fetch_token(challenge, scope, what)}"
        return None

    def _fetch_token(self, challenge: Challenge, scope: str, what: str) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.ref.registry} asked for a bearer token without naming a realm")
        params = {"scope": challenge.params.get("scope") or scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        credentials = self._credentials
        if credentials is not None and not _safe_for_credentials(realm):
            raise RegistryError(
                f"registry {self.ref.registry} named the token realm {realm!r}: refusing to send the credentials "
                "there (only https, or plain http on this machine)"
            )
        try:
            response = self._http.get(
                realm, params=params, auth=httpx.BasicAuth(*credentials) if credentials is not None else None
            )
        except httpx.TimeoutException as exc:
            raise RegistryUnavailable(
                f"token endpoint {realm} of registry {self.ref.registry} timed out: {exc}"
            ) from exc
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"cannot reach token endpoint {realm} of {self.ref.registry}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise RegistryError(f"token request to {realm} for registry {self.ref.registry} failed: {exc}") from exc
        if response.status_code in (401, 403):
            raise RegistryAuthError(self._refused(f"its token endpoint {realm} answered {response.status_code}"))
        if 400 <= response.status_code < 500 and response.status_code != 429:
            # Not RegistryNotFound: a missing token endpoint must not read as "the repository has no tags".
            raise RegistryError(
                f"token endpoint {realm} of registry {self.ref.registry} answered {response.status_code}"
                f"{_error_summary(response)}"
            )
        self._check(response, f"get a token from {realm} to {what}")
        body = self._json(response, f"get a token from {realm}")
        value = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"token endpoint {realm} of registry {self.ref.registry} answered without a token")
        expires_in = body.get("expires_in") if isinstance(body, dict) else None
        # The token spec says 60 seconds when expires_in is missing; renew a little before the end.
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 60.0
        self._tokens[scope] = _Token(value, self._clock() + max(lifetime - 10.0, lifetime / 2))
        return value

    def _refused(self, detail: str) -> str:
        if self._credentials is None:
            return (
                f"registry {self.ref.registry} refused anonymous access to {self.ref.repository} ({detail}); "
                "set REGISTRY_USERNAME and REGISTRY_PASSWORD"
            )
        return f"registry {self.ref.registry} refused the credentials of user {self._username!r} ({detail})"

    def _check(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        detail = f"{response.request.method} {response.request.url.path} answered {status}{_error_summary(response)}"
        if status in (401, 403):
            raise RegistryAuthError(self._refused(f"cannot {what}: {detail}"))
        if status == 404:
            raise RegistryNotFound(f"cannot {what}: {detail}")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise RateLimited(f"registry {self.ref.registry} is rate limiting us: {detail}", retry_after=retry_after)
        if status >= 500:
            raise RegistryUnavailable(
                f"registry {self.ref.registry} failed: cannot {what}: {detail}", retry_after=retry_after
            )
        raise RegistryError(f"registry {self.ref.registry}: cannot {what}: {detail}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # Usually an answer cut off on the way: worth another try later.
            raise RegistryUnavailable(
                f"registry {self.ref.registry} answered invalid JSON when asked to {what} "
                f"({len(response.content)} bytes; {exc.__class__.__name__}: {exc})"
            ) from exc

    def _next_link(self, response: httpx.Response) -> str | None:
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        try:
            target = response.url.join(link)
        except httpx.InvalidURL as exc:
            raise RegistryError(f"registry {self.ref.registry} sent an invalid tag page link {link!r}: {exc}") from exc
        if not self._same_origin(str(target)):
            raise RegistryLinkRefused(
                f"registry {self.ref.registry} sent a tag page link to another host, {_origin_text(target)} "
                f"({target}); only pages on {_origin_text(self._origin)} are followed",
                host=target.host,
            )
        return str(target)


def _origin_text(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


def _safe_for_credentials(realm: str) -> bool:
    """Credentials travel over https, or plain http to this machine (a test or local token server)."""
    try:
        url = httpx.URL(realm)
    except httpx.InvalidURL:
        return False
    if url.scheme == "https":
        return True
    return url.scheme == "http" and is_loopback(url.host)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _error_summary(response: httpx.Response) -> str:
    """The first ``errors[]`` entry of a distribution error body, if there is one."""
    try:
        body = json.loads(response.content) if response.content else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code, message = errors[0].get("code", ""), errors[0].get("message", "")
        return f" ({code}: {message})"[:300]
    return ""
