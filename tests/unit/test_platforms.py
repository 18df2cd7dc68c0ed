"""Platform names and matching, derived from containerd's ``platforms`` package (the code ``docker pull``
uses to choose an image index entry): ``Normalize`` (database.go ``normalizeArch``), ``Only``
(compare.go ``platformVector``) and the arm variant from ``uname -m`` (cpuinfo_linux.go
``getCPUVariantFromArch``). Each case below is one of their documented rules."""

from __future__ import annotations

import pytest

from shared.platforms import Platform, can_run, describe, engine_platform, parse_platform, platform, runnable


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (("linux", "x86_64"), "linux/amd64"),
        (("linux", "amd64", "v1"), "linux/amd64"),
        (("linux", "amd64", "v3"), "linux/amd64/v3"),
        (("linux", "i386"), "linux/386"),
        (("linux", "aarch64"), "linux/arm64"),
        (("linux", "arm64", "v8"), "linux/arm64"),
        (("linux", "arm64", "8"), "linux/arm64"),
        (("linux", "arm64", "v8.2"), "linux/arm64/v8.2"),
        (("linux", "armhf"), "linux/arm/v7"),
        (("linux", "armel"), "linux/arm/v6"),
        (("linux", "arm"), "linux/arm/v7"),
        (("linux", "arm", "7"), "linux/arm/v7"),
        (("linux", "arm", "6"), "linux/arm/v6"),
        (("Linux", "ARM64"), "linux/arm64"),
        (("macos", "arm64"), "darwin/arm64"),
    ],
)
def test_names_are_normalised_as_containerd_does(fields: tuple[str, ...], expected: str) -> None:
    assert str(platform(*fields)) == expected


@pytest.mark.parametrize(
    ("version_os", "arch", "machine", "expected"),
    [
        ("linux", "amd64", "x86_64", "linux/amd64"),
        ("linux", "arm64", "aarch64", "linux/arm64"),  # Pi 3/4/5 with the 64-bit system
        ("linux", "arm", "armv7l", "linux/arm/v7"),  # Pi 2/3/4 with the 32-bit system
        ("linux", "arm", "armv6l", "linux/arm/v6"),  # Pi 1 / Zero
        ("linux", "arm", "aarch64", "linux/arm/v8"),  # 32-bit system on a 64-bit kernel
        ("linux", "arm", "", "linux/arm/v7"),
    ],
)
def test_the_engine_platform_from_docker_version_and_info(
    version_os: str, arch: str, machine: str, expected: str
) -> None:
    assert str(engine_platform(version_os, arch, machine)) == expected


AMD64 = parse_platform("linux/amd64")
ARM64 = parse_platform("linux/arm64")
ARM_V7 = parse_platform("linux/arm/v7")
ARM_V6 = parse_platform("linux/arm/v6")


@pytest.mark.parametrize(
    ("host", "image", "runs"),
    [
        (AMD64, "linux/amd64", True),
        (AMD64, "linux/386", True),  # "For amd64, will also match 386"
        (AMD64, "linux/amd64/v2", True),  # variant levels are left to the engine
        (AMD64, "linux/arm64", False),
        (AMD64, "windows/amd64", False),
        (ARM64, "linux/arm64", True),
        (ARM64, "linux/arm64/v8", True),
        (ARM64, "linux/arm/v7", True),  # arm64 falls back to arm/v8..v5
        (ARM64, "linux/arm/v5", True),
        (ARM64, "linux/amd64", False),
        (ARM_V7, "linux/arm/v7", True),
        (ARM_V7, "linux/arm/v6", True),  # "For arm/v7, will also match arm/v6 and arm/v5"
        (ARM_V7, "linux/arm/v5", True),
        (ARM_V7, "linux/arm/v8", False),
        (ARM_V7, "linux/arm64", False),
        (ARM_V6, "linux/arm/v7", False),
        (ARM_V6, "linux/arm/v6", True),
        (parse_platform("linux/arm/v8"), "linux/arm/v7", True),
        (parse_platform("linux/riscv64"), "linux/riscv64", True),
        (parse_platform("linux/riscv64"), "linux/s390x", False),
    ],
)
def test_which_images_a_host_runs(host: Platform, image: str, runs: bool) -> None:
    assert can_run(host, parse_platform(image)) is runs


def test_runnable_is_any_entry() -> None:
    assert runnable(AMD64, [ARM64, AMD64])
    assert not runnable(AMD64, [ARM64, ARM_V7])
    assert not runnable(AMD64, [])


def test_describe_lists_platforms_without_attestation_entries() -> None:
    assert describe([ARM64]) == "linux/arm64"
    assert describe([ARM_V7, ARM64, platform("unknown", "unknown")]) == "linux/arm/v7 and linux/arm64"
    assert describe([ARM_V7, ARM64, ARM_V6]) == "linux/arm/v6, linux/arm/v7 and linux/arm64"
    assert describe([]) == "no platform"


@pytest.mark.parametrize("text", ["linux", "", "linux//v7", "a/b/c/d"])
def test_parse_platform_rejects_what_is_not_os_arch_variant(text: str) -> None:
    with pytest.raises(ValueError, match="os/architecture"):
        parse_platform(text)


def test_parse_platforms_keeps_order_and_refuses_repeats():
    from shared.platforms import parse_platforms

    assert [str(item) for item in parse_platforms(" linux/arm64,,linux/arm ")] == ["linux/arm64", "linux/arm/v7"]
    assert parse_platforms("") == ()
    with pytest.raises(ValueError, match="named twice"):
        parse_platforms("linux/arm,linux/arm/v7")
    with pytest.raises(ValueError, match="os/architecture"):
        parse_platforms("linux/arm64,amd64")
