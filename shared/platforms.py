"""Image platforms (``linux/arm64``, ``linux/arm/v7``) and which ones a machine can run.

The fields are those of an OCI image index entry's ``platform`` (``os``, ``architecture``,
``variant``). Names are normalised and matched the way containerd's ``platforms`` package does for
``docker pull`` (``platforms.Normalize`` and ``platforms.Only``), the oracle for these rules:

    amd64 host ....... runs amd64 (any variant) and 386
    arm64 host ....... runs arm64 (any variant) and arm/v8, v7, v6, v5
    arm/vN host ...... runs arm/vN down to arm/v5 (an arm entry without a variant means v7)
    any other ........ the same architecture

Variants of amd64 and arm64 (``amd64/v3``, ``arm64/v8.2``) are accepted whatever the host's level:
the engine's own detection decides those, and a wrong "no image for this machine" would stop a release
the engine could have pulled. A real mismatch there still fails the pull, with Docker's own message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Entries buildx adds for provenance and SBOM attestations: not images anyone can run.
UNKNOWN = "unknown"

_LOWEST_ARM = 5


@dataclass(frozen=True, order=True)
class Platform:
    """A normalised platform; ``str()`` gives the ``os/architecture[/variant]`` form Docker prints."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


def platform(os: str, architecture: str, variant: str = "") -> Platform:
    """A ``Platform`` from the fields of an image index entry or an image config, normalised."""
    os = os.strip().lower()
    architecture, variant = architecture.strip().lower(), variant.strip().lower()
    if os == "macos":
        os = "darwin"
    if architecture == "i386":
        architecture, variant = "386", ""
    elif architecture in ("x86_64", "x86-64", "amd64"):
        architecture = "amd64"
        variant = "" if variant == "v1" else variant
    elif architecture in ("aarch64", "arm64"):
        architecture = "arm64"
        variant = "" if variant in ("8", "v8") else variant
    elif architecture == "armhf":
        architecture, variant = "arm", "v7"
    elif architecture == "armel":
        architecture, variant = "arm", "v6"
    elif architecture == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return Platform(os, architecture, variant)


def parse_platform(text: str) -> Platform:
    """``linux/arm/v7`` -> Platform; raises ValueError for anything not ``os/arch[/variant]``."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {text!r} is not os/architecture[/variant], e.g. linux/arm64")
    return platform(*parts)


def parse_platforms(text: str) -> tuple[Platform, ...]:
    """``"linux/arm64, linux/arm/v7"`` -> the platforms in that order; empty text -> ``()``. A repeated
    platform (``linux/arm`` and ``linux/arm/v7`` are one) or a malformed one raises ValueError naming it."""
    found: list[Platform] = []
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        item = parse_platform(part)
        if item in found:
            raise ValueError(f"platform {part!r} is named twice (as {item})")
        found.append(item)
    return tuple(found)


def engine_platform(os: str, arch: str, machine: str) -> Platform:
    """The platform the Docker engine pulls for: ``Os``/``Arch`` of ``docker version`` (Go's names) and,
    for 32-bit arm, the variant from ``docker info``'s ``Architecture`` (the kernel's ``uname -m``).

    A Pi with a 32-bit system reports ``arm`` and ``armv7l`` (Pi 2/3/4), ``armv6l`` (Pi 1/Zero), or
    ``aarch64`` when a 64-bit kernel runs the 32-bit system (then the CPU is ARMv8: ``arm/v8``, which
    runs v7 images as well). A 64-bit system reports ``arm64``.
    """
    if arch.strip().lower() != "arm":
        return platform(os, arch)
    machine = machine.strip().lower()
    if machine in ("aarch64", "arm64"):
        return platform(os, "arm", "v8")
    if machine.startswith("armv") and len(machine) >= 5 and machine[4].isdigit():
        return platform(os, "arm", machine[3:5])
    return platform(os, "arm")


def can_run(host: Platform, image: Platform) -> bool:
    """Whether ``docker pull`` on ``host`` would pick an image built for ``image``."""
    if host.os != image.os:
        return False
    if host.architecture == "amd64":
        return image.architecture in ("amd64", "386")
    if host.architecture == "arm64":
        return image.architecture == "arm64" or (image.architecture == "arm" and _arm_level(image) is not None)
    if host.architecture == "arm":
        host_level, image_level = _arm_level(host), _arm_level(image)
        return image.architecture == "arm" and host_level is not None and image_level is not None and (
            image_level <= host_level
        )
    return host.architecture == image.architecture and (not image.variant or image.variant == host.variant)


def runnable(host: Platform, offered: Iterable[Platform]) -> bool:
    return any(can_run(host, image) for image in offered)


def describe(offered: Iterable[Platform]) -> str:
    """``linux/arm64 and linux/arm/v7``; ``no platform`` when there is none (attestations left out)."""
    names = sorted({str(item) for item in offered if item.os != UNKNOWN})
    if not names:
        return "no platform"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _arm_level(item: Platform) -> int | None:
    variant = item.variant or "v7"
    if variant.startswith("v") and variant[1:].isdigit() and _LOWEST_ARM <= int(variant[1:]) <= 8:
        return int(variant[1:])
    return None
