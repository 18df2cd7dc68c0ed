"""An HTTP probe every 50 ms while the app is swapped: the app comes back on the new (or restored)
version. The longest outage is printed here and reported by bench/swap_downtime.py."""

from __future__ import annotations

import pytest

from tests.support.cd_apps import CdWorld, HttpProbe

pytestmark = pytest.mark.docker


def test_probe_during_upgrade_manual_rollback_and_failed_deploy(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.1.0")
    cd_world.releases.push("1.2.0", "broken")
    deployer = cd_world.deployer(CD_HEALTH_URL=cd_world.url)
    deployer.deploy("1.0.0")

    with HttpProbe(cd_world.url) as upgrade:
        report = deployer.deploy("1.1.0")
        upgrade.wait_serving("1.1.0")
    assert report.outcome == "deployed"
    assert upgrade.answers() == ["1.0.0", "1.1.0"]

    with HttpProbe(cd_world.url) as rollback:
        report = deployer.rollback()
        rollback.wait_serving("1.0.0")
    assert report.outcome == "deployed"
    assert rollback.answers() == ["1.1.0", "1.0.0"]

    with HttpProbe(cd_world.url) as failed:
        report = deployer.deploy("1.2.0")
        failed.wait_serving("1.0.0")
    assert report.outcome == "rolled_back"
    assert failed.answers() == ["1.0.0"]

    print(  # shown with -s; the benchmark prints the same numbers
        f"longest outage: upgrade {upgrade.longest_outage:.2f}s, rollback {rollback.longest_outage:.2f}s,"
        f" failed deploy {failed.longest_outage:.2f}s"
    )
