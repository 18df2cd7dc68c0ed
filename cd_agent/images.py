"""The release images of a deploy: get one (pulled, or the local copy), and prune the old ones; read a pin.

Both are strategy-agnostic: whatever replaces the container, the image is fetched first while the old
container keeps serving, and after a healthy deploy the current and previous images stay for a rollback.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from cd_agent.engine import Engine, ImageInfo
from cd_agent.errors import CdError
from shared.versions import parse_version

if TYPE_CHECKING:
    import loguru

    from cd_agent.apps import AppTarget


def fetch_image(
    engine: Engine, target: AppTarget, log: loguru.Logger, version: str, digest: str | None
) -> ImageInfo:
    """``CD_IMAGE:version``: the local image when it has ``digest`` already, else pulled; when the pull
    fails, the local image of that tag (a rollback must work while the registry is down)."""
    repository = target.image.name
    reference = f"{repository}:{version}"
    local = engine.image(reference)
    if local is not None and digest is not None and local.digest_for(repository) == digest:
        log.info("{} is already here ({}); not pulling", reference, digest)
        return local
    auth = target.registry_auth
    log.info("pulling {} while the current container keeps serving", reference)
    try:
        return engine.pull(repository, version, auth=auth)
    except CdError as exc:
        if local is None:
            raise
        log.warning("pull failed ({}); using the local image {}", exc, reference)
        return local


# A running image whose tag is not a version is still adopted, under this name.
ADOPTED = "adopted"


def fetch_pinned(
    engine: Engine, target: AppTarget, log: loguru.Logger, version: str, digest: str | None, *, why: str
) -> tuple[ImageInfo, str]:
    """``fetch_image``, and the registry digest a pin (``IMAGE:X.Y.Z@sha256:...``) needs; ``CdError`` saying
    ``why`` when the image has none."""
    image = fetch_image(engine, target, log, version, digest)
    digest = image.digest_for(target.image.name) or digest
    if digest is None:
        raise CdError(f"{target.image.name}:{version} has no registry digest: {why}")
    return image, digest


def version_of(image: str) -> str | None:
    """The version tag of ``repo:1.2.3@sha256:...`` (None without a tag; ``adopted`` for a non-version tag)."""
    last = image.split("@", 1)[0].rpartition("/")[2]
    if ":" not in last:
        return None
    tag = last.rpartition(":")[2]
    return tag if parse_version(tag) is not None else ADOPTED


def digest_of(image: str) -> str | None:
    """The digest of ``repo:tag@sha256:...``, or None."""
    return image.split("@", 1)[1] if "@" in image else None


def prune_images(
    engine: Engine, repository: str, log: loguru.Logger, current: str, previous: str | None,
    keep: Collection[str] | None = (), *, keep_images: int = 2, quarantined: Collection[str] = (),
) -> None:
    """Remove local tags of ``repository`` older than ``current``, except ``previous``, ``keep`` (the
    versions other apps of the same image run or roll back to; None: they are not known, prune nothing)
    and the newest older releases that make ``keep_images`` (``CD_KEEP_IMAGES``) with current and previous;
    a ``quarantined`` release (it failed, or was rolled back from) is not one to keep. Docker refuses to
    remove an image a container uses; never fails a deploy."""
    floor = parse_version(current)
    if floor is None or keep is None:
        return
    try:
        images = engine.images(repository)
    except CdError as exc:
        log.warning("could not list images to prune: {}", exc)
        return
    older = sorted(
        {(version, tag) for image in images for tag in (ref.rpartition(":")[2] for ref in image.tags)
         if (version := parse_version(tag)) is not None and version < floor},
        reverse=True,
    )
    own = [version for version in (current, previous) if version is not None]
    history = [tag for _, tag in older if tag not in own and tag not in quarantined]
    kept = {*own, *keep, *history[:max(0, keep_images - len(set(own)))]}
    for image in images:
        for reference in image.tags:
            tag = reference.rpartition(":")[2]
            version = parse_version(tag)
            if tag in kept or version is None or version >= floor:
                continue
            try:
                engine.remove_image(reference)
            except CdError as exc:
                log.warning("could not prune image {}: {}", reference, exc)
            else:
                log.info("done: prune image {}", reference)
