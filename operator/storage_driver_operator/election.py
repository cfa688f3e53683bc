"""Leader election among operator replicas: one coordination.k8s.io Lease, renewed by the leader
(decisions in `leadership`), and a fence on the controller's writes.

A leader that cannot renew within the renew deadline exits at once (the pod restarts as a
follower): nothing it would still do is worth the risk of two writers. Until then every write of
the controller passes the fence, which closes at the deadline by the local monotonic clock, so
even a leader paused (SIGSTOP) and resumed after another replica took over writes nothing: it
finds the fence closed, and a watchdog thread ends the process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from storage_driver_api.kube import LEASES, ApiError, Credentials, KubeClient
from storage_driver_api.logs import fields

from storage_driver_operator.leadership import Timing, lease_spec, next_action, record_of, still_leading
from storage_driver_operator.webhookconfig import COMPONENT_LABEL, OPERATOR_COMPONENT

log = logging.getLogger("storage_driver_operator.election")

LOST_EXIT_CODE = 3


def exit_now(reason: str) -> NoReturn:
    log.error("lost the leadership; exiting so that only the new leader writes", extra=fields(reason=reason))
    logging.shutdown()
    os._exit(LOST_EXIT_CODE)


class LeaderElector:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing,
        *,
        on_lost: Callable[[str], NoReturn] = exit_now,
        on_elected: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.on_lost = on_lost
        self.on_elected = on_elected  # called as leading is set, before anything can run
        self.clock = clock
        self.leading = asyncio.Event()
        self.became_leader_at: float | None = None
        self._last_renew_sent: float | None = None
        self._seen: tuple[str, float] | None = None  # (resourceVersion, first seen at)

    def fence(self) -> bool:
        """May the controller write now?"""
        return self.leading.is_set() and still_leading(self._last_renew_sent, self.clock(), self.timing)

    def deposed(self) -> bool:
        """Has this replica led and passed its renew deadline (it must write nothing more)?"""
        return self.leading.is_set() and not self.fence()

    def _observed_at(self, version: str, now: float) -> float:
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, now)
        return self._seen[1]

    async def attempt(self) -> None:
        sent = self.clock()
        lease = await self.kube.get_or_none(LEASES, self.name, self.namespace)
        record = record_of(lease)
        action = next_action(
            record, self.identity, self._observed_at(record.version if record else "", sent), sent
        )
        if action == "wait":
            if self.leading.is_set():
                self.on_lost(f"{record.holder if record else 'nobody'} holds the Lease now")
            return
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            # The label routes it to the webhook entry that fails open (webhookconfig).
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {COMPONENT_LABEL: OPERATOR_COMPONENT},
            },
            "spec": lease_spec(record, self.identity, action, self.timing, dt.datetime.now(dt.UTC)),
        }
        if lease is None:
            await self.kube.create(LEASES, body, namespace=self.namespace)
        else:
            # The resourceVersion makes it a compare-and-swap: a concurrent writer gets a 409.
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            await self.kube.replace(LEASES, self.name, body, namespace=self.namespace)
        self._last_renew_sent = sent
        if not self.leading.is_set():
            self.became_leader_at = self.clock()
            self.leading.set()
            self.on_elected()
            log.info(
                "became the leader",
                extra=fields(lease=f"{self.namespace}/{self.name}", identity=self.identity, action=action),
            )

    async def release(self) -> None:
        """On a clean stop (SIGTERM, a rolling update), after the controller and kopf have stopped:
        hand the Lease over at once instead of making the next leader wait out its duration."""
        if not self.leading.is_set():
            return
        self.leading.clear()  # the fence closes, and the watchdog has nothing to guard
        try:
            lease = await self.kube.get_or_none(LEASES, self.name, self.namespace)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.kube.replace(LEASES, self.name, lease, namespace=self.namespace)
            log.info("released the leadership", extra=fields(lease=f"{self.namespace}/{self.name}"))
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning(
                "cannot release the Lease; the next leader waits it out", extra=fields(error=str(exc))
            )

    async def run(self) -> None:
        threading.Thread(target=self._watchdog, name="leader-watchdog", daemon=True).start()
        log.info(
            "waiting to lead", extra=fields(lease=f"{self.namespace}/{self.name}", identity=self.identity)
        )
        while True:
            try:
                await self.attempt()
            except (ApiError, OSError, TimeoutError) as exc:
                if not (isinstance(exc, ApiError) and exc.conflict and not self.leading.is_set()):
                    log.warning("leader election attempt failed", extra=fields(error=str(exc)))
            if self.deposed():
                self.on_lost("could not renew the Lease within the renew deadline")
            await asyncio.sleep(self.timing.retry)

    def _watchdog(self) -> None:
        """A thread, so that it also runs when the event loop is blocked or has just resumed."""
        while True:
            time.sleep(0.1)
            if self.deposed():
                self.on_lost("the renew deadline passed (paused or partitioned)")


class FencedKubeClient(KubeClient):
    """The controller's client: every request but a read passes the leader's fence first."""

    def __init__(self, credentials: Credentials, *, fence: Callable[[], bool], **kwargs: Any):
        super().__init__(credentials, **kwargs)
        self.fence = fence
        self.fenced = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method != "GET" and not self.fence():
            self.fenced += 1
            raise ApiError(
                503, "NotLeader", f"{method} {path}: this replica is not the leader; nothing written"
            )
        return await super().request(method, path, **kwargs)
