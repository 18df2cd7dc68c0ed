"""The blue-green strategy (``CD_STRATEGY=blue-green``): the new release starts beside the old one behind
the proxy (``cd_agent/proxy.py``), and users reach it only once it is proven healthy::

    ensure the proxy (created on the first deploy) -> pull -> spec (nothing touched yet)
      -> create NAME-<colour> on the private network, no published ports, alias NAME-<colour>; on the
         app's other networks (the stack's) alias NAME-<colour> only (``cd_agent.stack_aliases``)
         (a rollback reuses the stopped NAME-previous instead: a warm start, not a cold one)
      -> start -> health-check it directly (its HEALTHCHECK, or CD_HEALTH_URL's path at its address)
      -> healthy:   the proxy answers to the app's aliases on the stack's networks (``web``: joined
                    once, on the first deploy, before the switch) -> switch the proxy to it
                    -> CD_PROXY_GRACE (in-flight requests finish on the old one)
                    -> stop the old one, keep it as NAME-previous (replacing the one kept before)
                    -> rename the new one NAME                                                  -> "deployed"
      -> unhealthy: remove the new container; the old one never stopped, the proxy never
                    switched; quarantine the version                                           -> "rolled_back"

The container serving is always called NAME (as with the swap), so ``cd-agent status`` and the
deployer's checks need nothing new; the proxy reaches it by its colour alias, which never changes
while it lives. Each step is written to the state journal first (``bg_*`` phases): ``recover``
finishes a deploy killed after the verdict (the switch and retirement are idempotent) and undoes
one killed before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from cd_agent.container_spec import (
    LABEL_DIGEST,
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_VERSION,
    ContainerSpec,
    beside,
    build_spec,
    check_spec,
    networks_text,
    read_env_file,
)
from cd_agent.engine import ContainerInfo
from cd_agent.errors import CdError, DeployError, EngineError, ProxyError
from cd_agent.health import HealthChecker
from cd_agent.images import fetch_image, prune_images
from cd_agent.proxy import network_name
from cd_agent.proxy_ports import proxied_ports
from cd_agent.report import DeployReport, Outcome
from cd_agent.stack_aliases import demote, hold_back, live_aliases
from cd_agent.state import BLUE_GREEN_PHASES, Journal, Release
from cd_agent.strategy import Attempt, DeployContext, StepFailure, StrategyBase, log_failure, release_version

if TYPE_CHECKING:
    import loguru

LABEL_COLOUR = "io.pi-cicd.colour"
COLOURS = ("blue", "green")


class Proxy(Protocol):
    """What the strategy needs of the proxy (``cd_agent.proxy.ProxyController``)."""

    def ensure(self, serve: Mapping[str, Sequence[str]] | None = None) -> None: ...

    def upstream(self) -> str | None: ...

    def switch(self, upstream: str | None) -> None: ...

    def address(self, container: str) -> str: ...

    def serve_on(self, networks: Mapping[str, Sequence[str]]) -> list[str]: ...


def colour_name(app: str, colour: str) -> str:
    """The name a new container starts under, and its alias on the private network for good."""
    return f"{app}-{colour}"


def kept_name(app: str) -> str:
    """The stopped previous release, kept for ``cd-agent rollback``."""
    return f"{app}-previous"


def alias_of(app: str, container: ContainerInfo) -> str | None:
    colour = container.labels.get(LABEL_COLOUR)
    return colour_name(app, colour) if colour in COLOURS else None


class BlueGreen(StrategyBase):
    """Deploys a release of ``target.image`` behind ``proxy``, the serving container called
    ``target.container_name``."""

    def __init__(
        self, context: DeployContext, proxy: Proxy, *, health: Callable[[str | None], HealthChecker]
    ) -> None:
        super().__init__(context)
        self._proxy = proxy
        self._health = health

    # the deploy

    def deploy(self, log: loguru.Logger, version: str, digest: str | None, run: int) -> DeployReport:
        current = release_version(self._state.current)
        try:
            serving = self._engine.container(self._name)
            self._proxy.ensure(_stack_of(serving))  # a proxy it (re-)creates joins the stack before it starts
            self._serve_stack(serving)
        except CdError as exc:
            log.error("could not set up the proxy: {}", exc)
            return DeployReport("failed", version, current, str(exc), failed_step="proxy")
        repository = self._target.image.name
        try:
            image = fetch_image(self._engine, self._target, log, version, digest)
        except CdError as exc:
            log.error("could not get the image: {}", exc)
            return DeployReport("failed", version, current, str(exc), failed_step="pull")
        digest = image.digest_for(repository) or digest
        try:
            old = self._engine.container(self._name)
            colour = self._colour_beside(old)
            kept = self._engine.container(kept_name(self._name))
            spec = beside(
                build_spec(
                    self._target, image=f"{repository}:{version}", version=version, digest=digest,
                    env=read_env_file(self._target.env_file), old=old, run=run,
                    old_image=self._engine.image(old.image_id) if old is not None else None,
                ),
                name=colour_name(self._name, colour), network=network_name(self._name),
                alias=colour_name(self._name, colour),
            )
            spec = hold_back(
                replace(spec, labels={**spec.labels, LABEL_COLOUR: colour}), proxy_network=network_name(self._name),
                alias=colour_name(self._name, colour), colours=tuple(colour_name(self._name, c) for c in COLOURS),
                inherited=live_aliases(old) if old is not None else {},
                named=frozenset(join.name for join in self._target.networks),
            )
            check_spec(self._engine, spec)
        except CdError as exc:
            log.error("could not prepare the new container: {}", exc)
            return DeployReport("failed", version, current, str(exc), failed_step="prepare")
        old_version = old.labels.get(LABEL_VERSION) if old else None
        old_digest = (old.labels.get(LABEL_DIGEST) or None) if old else None
        self._state.begin_journal(Journal(
            version=version, container_name=self._name, phase="bg_pulled", started_at=self._clock(), run=run,
            strategy=self._target.strategy,
            digest=digest, old_container_id=old.id if old else None, old_version=old_version, old_digest=old_digest,
        ))
        self._phase("bg_pulled")
        attempt = Attempt(version, digest, old, old_version, old_digest)
        failure = self._start_beside(log, attempt, spec, kept)
        if failure is not None:
            return self._abandon(log, attempt, failure)
        assert attempt.new_id is not None  # noqa: S101  # set by _start_beside when it succeeds
        return self._finish(log, attempt.new_id, old, version, digest, old_version, old_digest)

    def _colour_beside(self, old: ContainerInfo | None) -> str:
        if old is None:
            return COLOURS[0]
        colour = old.labels.get(LABEL_COLOUR)
        if old.labels.get(LABEL_MANAGED) != "true" or colour not in COLOURS:
            raise DeployError(
                f"container {self._name} is not behind the blue-green proxy (deployed by the swap strategy or by"
                f" hand, it publishes the ports the proxy needs): stop and remove it, then deploy again"
            )
        return COLOURS[1 - COLOURS.index(colour)]

    def _start_beside(
        self, log: loguru.Logger, attempt: Attempt, spec: ContainerSpec, kept: ContainerInfo | None
    ) -> StepFailure | None:
        step = "create"
        try:
            reuse = kept is not None and _same_release(kept, attempt.version, attempt.digest) and (
                kept.labels.get(LABEL_COLOUR) == spec.labels[LABEL_COLOUR]
            )
            stray = self._engine.container(spec.name)
            if stray is not None and (attempt.old is None or stray.id != attempt.old.id):
                # Left by a deploy whose journal was lost; it is not serving (the proxy points at NAME's colour).
                self._engine.remove(stray.id)
            if kept is not None and reuse:
                self._engine.rename(kept.id, spec.name)
                attempt.new_id = new_id = kept.id
                log.info("reusing the stopped {} container (kept from an earlier deploy)", attempt.version)
            else:
                attempt.new_id = new_id = self._engine.create(spec)
                log.info("created container {} ({}) beside the running one on {}", spec.name, new_id[:12],
                         networks_text(spec))
            self._journal(phase="bg_created", new_container_id=new_id)
            step = "start"
            self._engine.start(new_id)
            self._journal(phase="bg_started")
            log.info("started {}; health check (timeout {:g}s)", attempt.version, self._target.health_timeout)
            step = "health"
            verdict = self._health(self._direct_url(new_id)).wait(new_id)
        except CdError as exc:
            quarantine = step == "start" and isinstance(exc, EngineError)
            return StepFailure(step, str(exc), quarantine, self._tail(attempt.new_id))
        if not verdict.healthy:
            return StepFailure("health", verdict.reason, True, self._tail(new_id), verdict.output)
        self._journal(phase="bg_proven", healthy=True)
        log.info("{} is healthy: {}", attempt.version, verdict.reason)
        return None

    def _serve_stack(self, serving: ContainerInfo | None) -> None:
        """The proxy answers to the app's aliases on the stack's networks, as ``serving``'s label says."""
        if serving is not None:
            self._proxy.serve_on(live_aliases(serving))

    def _direct_url(self, container: str) -> str | None:
        """CD_HEALTH_URL's path at the container's own address (it publishes no port): users are not asked."""
        url = self._target.health_url
        if url is None:
            return None
        info = self._engine.container(container)
        if info is None or not info.running:
            return None  # the checker sees it stopped and fails it at once
        parts = urlsplit(url)
        published = {port.host_port: port.container_port for port in self._target.ports if port.host_port}
        port = published.get(parts.port) if parts.port else None
        port = port or proxied_ports(self._target.ports)[0]
        try:
            address = self._proxy.address(container)
        except ProxyError:
            # It exited (or is being restarted) since it was inspected: the checker fails it at once.
            again = self._engine.container(container)
            if again is not None and again.running and not again.restarting and not again.restart_count:
                raise
            return None
        return urlunsplit((parts.scheme, f"{address}:{port}", parts.path or "/", parts.query, ""))

    def _finish(
        self, log: loguru.Logger, new_id: str, old: ContainerInfo | None, version: str, digest: str | None,
        old_version: str | None, old_digest: str | None,
    ) -> DeployReport:
        """Switch, let the old one drain, retire it, record. Every step is idempotent: recovery repeats them."""
        new = self._engine.container(new_id)
        alias = alias_of(self._name, new) if new is not None else None
        if new is None or alias is None:
            raise DeployError(f"the new container {new_id[:12]} is gone or has no colour; nothing to switch to")
        if not new.running:
            self._engine.start(new_id)
        # The stack's services asking for the app's alias (``web``) reach the proxy, hence only a proven
        # release. Joined before the switch: on the first deploy the proxy still answers 503 then, so the
        # move of its published ports that Docker may make on a join (``ProxyController.ensure``) cuts no
        # user of a release.
        self._serve_stack(new)
        self._proxy.switch(alias)
        self._journal(phase="bg_switched")
        log.info("the proxy sends new requests to {} ({})", version, alias)
        if old is not None:
            old_now = self._engine.container(old.id)
            if old_now is not None:
                old_alias = alias_of(self._name, old_now)
                if old_now.running:
                    self._sleep(self._target.proxy_grace)
                    if old_alias is not None:
                        # A colour made before the proxy answered to the app's aliases has them itself: it
                        # drops them before it stops, so the stack's services are not sent to an exiting process.
                        demote(self._engine, old_now, old_alias, live_aliases(new))
                    self._engine.stop(old.id, timeout=self._target.stop_timeout)
                    log.info("stopped {} after a {:g}s grace period", old_version, self._target.proxy_grace)
                elif old_alias is not None:
                    # Kept for a rollback: restarted, it is unproven until its own switch.
                    demote(self._engine, old_now, old_alias, live_aliases(new))
                if old_now.name != kept_name(self._name):
                    # The release kept until now stays until this one is proven: a failed deploy keeps
                    # the rollback target. Only one is kept.
                    kept = self._engine.container(kept_name(self._name))
                    if kept is not None and kept.id not in (old.id, new_id):
                        self._engine.remove(kept.id)
                    self._engine.rename(old.id, kept_name(self._name))
        if new.name != self._name:
            self._engine.rename(new_id, self._name)
        self._journal(phase="bg_retired")
        previous = Release(old_version, old_digest) if old_version else _other(self._state.current, version)
        self._state.record_deployed(Release(version, digest, new_id, self._clock()), previous)
        previous_version = previous.version if previous else None
        prune_images(
            self._engine, self._target.image.name, log, version, previous_version, keep=self._context.siblings_keep(),
            keep_images=self._target.keep_images, quarantined=self._state.quarantined_versions,
        )
        return DeployReport("deployed", version, previous_version, downtime_s=0.0, digest=digest,
                            health="proven healthy before the proxy switched to it")

    def _abandon(self, log: loguru.Logger, attempt: Attempt, failure: StepFailure) -> DeployReport:
        version = attempt.version
        log_failure(log, version, failure)
        try:
            if attempt.new_id is not None:
                self._engine.remove(attempt.new_id)
                log.info("removed the new container; users never reached it")
        except CdError as exc:
            log.error("could not remove the new container: {} (the next start reconciles)", exc)
            return DeployReport(
                "failed", version, attempt.old_version,
                f"{failure.reason}; and removing the new container failed: {exc}", failure.log_tail or None,
                failed_step=failure.step, health_output=failure.output,
            )
        if failure.quarantine:
            self._state.quarantine(version, f"{failure.step}: {failure.reason}")
            log.warning("{} is quarantined: it will not be tried again unless forced", version)
        self._state.clear_journal()
        outcome: Outcome = "rolled_back" if attempt.old is not None else "failed"
        return DeployReport(
            outcome, version, attempt.old_version, failure.reason, failure.log_tail or None, downtime_s=0.0,
            failed_step=failure.step, quarantined=failure.quarantine, health_output=failure.output,
        )

    # crash recovery (called by cd_agent.recovery.Recovery, holding the deploy lock)

    def owns(self, journal: Journal) -> bool:
        return journal.phase in BLUE_GREEN_PHASES

    def recover(self, journal: Journal) -> str:
        """Finish a deploy killed after its verdict, undo one killed before; the proxy ends on NAME."""
        engine = self._engine
        self._proxy.ensure(_stack_of(engine.container(self._name)))
        new = engine.container(journal.new_container_id) if journal.new_container_id else None
        if new is None:
            # Killed between `create` and writing its id: recognise it by our run label.
            for colour in COLOURS:
                candidate = engine.container(colour_name(self._name, colour))
                if candidate is not None and candidate.labels.get(LABEL_RUN) == str(journal.run):
                    new = candidate
        old = engine.container(journal.old_container_id) if journal.old_container_id else None
        if journal.phase in ("bg_proven", "bg_switched", "bg_retired") and journal.healthy and new is not None:
            self._finish(logger, new.id, old, journal.version, journal.digest, journal.old_version, journal.old_digest)
            return (
                f"finished the interrupted blue-green deploy of {journal.version} (reached {journal.phase!r}):"
                " it had been proven healthy, so the proxy serves it"
            )
        if new is not None and (old is None or new.id != old.id):
            engine.remove(new.id)
        if old is not None:
            if old.name != self._name:
                engine.rename(old.id, self._name)
            if not old.running:
                engine.start(old.id)
            self._proxy.switch(alias_of(self._name, old))
            self._serve_stack(old)
            message = (
                f"undid the interrupted blue-green deploy of {journal.version} (reached {journal.phase!r},"
                f" not proven healthy): removed the new container; {journal.old_version} kept serving"
            )
        else:
            message = (
                f"undid the interrupted first deploy of {journal.version} (reached {journal.phase!r}):"
                " removed its container; the next deploy starts again"
            )
        self._state.clear_journal()
        return message

    def agree(self) -> str:
        """Without a journal: the proxy exists and sends traffic to the container called NAME."""
        serving = self._engine.container(self._name)
        self._proxy.ensure(_stack_of(serving))
        alias = alias_of(self._name, serving) if serving is not None else None
        if alias is None:
            return "the proxy is up; no blue-green container to send traffic to yet"
        if serving is not None and not serving.running:
            self._engine.start(serving.id)
        self._serve_stack(serving)
        if self._proxy.upstream() != alias:
            self._proxy.switch(alias)
            return f"the proxy now sends traffic to {self._name} ({alias})"
        return f"the proxy sends traffic to {self._name} ({alias})"


def _stack_of(serving: ContainerInfo | None) -> dict[str, tuple[str, ...]]:
    """The app's aliases on the stack's networks while ``serving`` serves (none before the first deploy)."""
    return live_aliases(serving) if serving is not None else {}


def _same_release(container: ContainerInfo, version: str, digest: str | None) -> bool:
    if container.labels.get(LABEL_VERSION) != version:
        return False
    return not digest or container.labels.get(LABEL_DIGEST) in ("", digest)


def _other(release: Release | None, version: str) -> Release | None:
    if release is None or release.version == version:
        return None
    return Release(release.version, release.digest, None, release.deployed_at)

