"""Multi-platform images pushed to the test registry by hand, without buildx, through the registry's
HTTP API (distribution spec: ``POST``/``PUT`` blob uploads, ``PUT`` manifests by digest and by tag).

What buildx pushes for ``--platform linux/amd64,linux/arm64``: an OCI image index whose entries are
OCI image manifests with a ``platform``, plus an ``unknown/unknown`` attestation manifest per image.
``foreign_image`` makes an image for another platform (a real, valid image: config + one gzip layer;
this machine just cannot run it); ``oci_copy`` re-publishes an image ``docker push`` made as an OCI
manifest, so a runnable app can sit in an index next to foreign ones.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

import httpx

from shared.platforms import Platform, engine_platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
IN_TOTO = "application/vnd.in-toto+json"

ARM64 = {"os": "linux", "architecture": "arm64"}
ARM_V7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
AMD64 = {"os": "linux", "architecture": "amd64"}
S390X = {"os": "linux", "architecture": "s390x"}


def engine_of(docker_client: Any) -> Platform:
    """The test machine's platform, read from the engine as ``DockerGateway.platform`` does."""
    version = docker_client.version()
    return engine_platform(version["Os"], version["Arch"], docker_client.info()["Architecture"])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One entry of an index: a manifest already in the registry, and its platform."""

    digest: str
    size: int
    platform: dict[str, str]
    annotations: dict[str, str] | None = None

    def descriptor(self) -> dict[str, Any]:
        item: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.size,
                                "platform": self.platform}
        if self.annotations:
            item["annotations"] = self.annotations
        return item


class Publisher:
    """Pushes blobs, manifests and indexes into ``repository`` (``owner/app``) of the registry at ``url``."""

    def __init__(self, url: str, repository: str) -> None:
        self.repository = repository
        self.http = httpx.Client(base_url=url, timeout=30)

    @classmethod
    def for_image(cls, image: str) -> Publisher:
        """For ``127.0.0.1:PORT/owner/app`` (a test registry on loopback, plain http)."""
        registry, _, repository = image.partition("/")
        return cls(f"http://{registry}", repository)

    def close(self) -> None:
        self.http.close()

    def blob(self, data: bytes) -> str:
        digest = sha256(data)
        started = self.http.post(f"/v2/{self.repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = httpx.URL(started.headers["Location"])
        done = self.http.put(location.copy_merge_params({"digest": digest}), content=data,
                             headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return digest

    def manifest(self, reference: str, body: dict[str, Any], media_type: str) -> tuple[str, int]:
        data = json.dumps(body, separators=(",", ":")).encode()
        answer = self.http.put(f"/v2/{self.repository}/manifests/{reference}", content=data,
                               headers={"Content-Type": media_type})
        assert answer.status_code == 201, answer.text
        return sha256(data), len(data)

    def foreign_image(self, platform: dict[str, str]) -> Entry:
        """A tiny image for ``platform`` (e.g. ``{"os": "linux", "architecture": "arm64"}``), by digest."""
        layer_tar = io.BytesIO()
        with tarfile.open(fileobj=layer_tar, mode="w") as tar:
            text = f"built for {'/'.join(platform.values())}\n".encode()
            info = tarfile.TarInfo("platform.txt")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
        raw = layer_tar.getvalue()
        layer = gzip.compress(raw, mtime=0)
        config = json.dumps({
            **platform, "config": {"Cmd": ["/platform.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]},
        }).encode()
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.blob(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": self.blob(layer), "size": len(layer)}],
        }
        digest, size = self.manifest_by_digest(manifest)
        return Entry(digest, size, platform)

    def attestation(self, subject: Entry) -> Entry:
        """An ``unknown/unknown`` attestation manifest for ``subject``, as buildx adds one per image."""
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "x"}).encode()
        config = b"{}"
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.blob(config), "size": len(config)},
            "layers": [{"mediaType": IN_TOTO, "digest": self.blob(statement), "size": len(statement)}],
        }
        digest, size = self.manifest_by_digest(manifest)
        return Entry(digest, size, {"os": "unknown", "architecture": "unknown"}, {
            "vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": subject.digest,
        })

    def with_attestations(self, entries: list[Entry]) -> list[Entry]:
        return entries + [self.attestation(entry) for entry in entries]

    def oci_copy(self, tag: str) -> Entry:
        """The image ``docker push`` put under ``tag``, published again as an OCI manifest (same blobs)."""
        answer = self.http.get(f"/v2/{self.repository}/manifests/{tag}", headers={"Accept": DOCKER_MANIFEST})
        assert answer.status_code == 200, answer.text
        pushed = answer.json()
        config_answer = self.http.get(f"/v2/{self.repository}/blobs/{pushed['config']['digest']}")
        config = config_answer.json()
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {**pushed["config"], "mediaType": OCI_CONFIG},
            "layers": [{**layer, "mediaType": OCI_LAYER} for layer in pushed["layers"]],
        }
        digest, size = self.manifest_by_digest(manifest)
        platform = {"os": config["os"], "architecture": config["architecture"]}
        if config.get("variant"):
            platform["variant"] = config["variant"]
        return Entry(digest, size, platform)

    def manifest_by_digest(self, body: dict[str, Any]) -> tuple[str, int]:
        data = json.dumps(body, separators=(",", ":")).encode()
        return self.manifest(sha256(data), body, OCI_MANIFEST)

    def index(self, tag: str, entries: list[Entry]) -> str:
        """Tag an OCI image index of ``entries``; returns its digest."""
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry.descriptor() for entry in entries]}
        digest, _ = self.manifest(tag, body, OCI_INDEX)
        return digest
