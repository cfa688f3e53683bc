"""`storage-operator`: reconciles StorageDrivers against NodeDevices into per-node
NodeDriverConfigs. With no arguments it runs against the current kubeconfig.

kopf serves the StorageDrivers: the finalizer, the deletion handler (which waits until every
live node unloaded the driver), retries with backoff, the liveness endpoint, authentication.
The per-node and per-device objects are followed by the lean cache in `controller`, which
kopf's indexes and per-object handlers could not do at 16,000 NodeDevices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import kopf
from storage_driver_api.constants import ANNOTATION_PREFIX, FINALIZER, GROUP, STORAGE_DRIVERS, VERSION
from storage_driver_api.kube import Credentials, KubeClient, KubeConfigError, load_credentials
from storage_driver_api.logs import fields, setup_logging

from storage_driver_operator import election, kopffence, metrics, webhook
from storage_driver_operator.controller import Controller
from storage_driver_operator.leadership import Timing
from storage_driver_operator.options import Options
from storage_driver_operator.sweep import Sweeper

log = logging.getLogger("storage_driver_operator")


def operator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("storage-driver-operator")
    except PackageNotFoundError:
        return "0.0.0+unknown"


async def connection_info(
    credentials: Credentials, event_namespace: str, *, refused: str | None = None
) -> kopf.ConnectionInfo:
    """kopf's view of the credentials. kopf asks again after a 401 or at `expiration`: then
    `refused` is the Authorization it had, renewed unless the client renewed it meanwhile."""
    if refused is not None or credentials.renewal_due():
        await asyncio.to_thread(credentials.renew, force=refused is not None, refused=refused)
    scheme, _, token = (credentials.authorization() or "").partition(" ")
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_path=credentials.ca_file,
        ca_data=credentials.ca_data,
        insecure=credentials.insecure,
        scheme=scheme or None,
        token=token or None,
        certificate_path=credentials.client_cert_file,
        certificate_data=credentials.client_cert_data,
        private_key_path=credentials.client_key_file,
        private_key_data=credentials.client_key_data,
        proxy_url=credentials.proxy,
        default_namespace=event_namespace,
        # kopf logs in again at this time, and after a 401.
        expiration=credentials.tokens.relogin_at() if credentials.tokens else None,
    )


def build_registry(
    controller: Controller,
    credentials: Credentials,
    options: Options,
    stop_controller: Callable[[], object],
    admission: kopf.WebhookServer | None = None,
    *,
    leading: bool = True,
) -> kopf.OperatorRegistry:
    """kopf's registry: the leader's (StorageDriver handlers, the controller's health), or a
    follower's (settings, login and the webhook only: it watches nothing and writes nothing)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        """Every kopf setting in one place."""
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        # No kopf peering: one replica, or several behind the leader Lease (--leader-election).
        settings.peering.standalone = True
        # Scanning stays on: kopf notices the StorageDriver CRD when it is installed after the operator.
        settings.watching.server_timeout = int(options.watch_timeout)  # an integer in the URL
        settings.watching.client_timeout = int(options.watch_timeout) + 30
        settings.watching.connect_timeout = 10
        settings.watching.inactivity_timeout = options.inactivity_timeout
        settings.networking.request_timeout = 30
        settings.networking.connect_timeout = 10
        settings.networking.error_backoffs = [1, 2, 4, 8, 16, 30]
        settings.execution.default_backoff = 10
        settings.posting.level = logging.WARNING  # kopf's own Events only for problems
        settings.posting.reporting_component = "storage-operator"
        # The webhook configuration is the operator's own (webhookconfig explains why not kopf's).
        settings.admission.server = admission
        settings.admission.managed = None

    given: list[str] = []  # the Authorization kopf last got

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        info = await connection_info(
            credentials, options.event_namespace, refused=given[-1] if given else None
        )
        given[:] = [credentials.authorization() or ""]
        return info

    @kopf.on.cleanup(registry=registry)
    def stop_watching(**_: Any) -> None:
        """On SIGTERM, end the controller's watches with kopf's own: kopf waits 5 s for every task
        it did not start (the cache's watches never end by themselves) before it cancels them."""
        stop_controller()

    @kopf.on.probe(id="controller", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        return controller.health() if leading else {"role": "follower"}

    if not leading:
        return registry

    @kopf.on.delete(GROUP, VERSION, STORAGE_DRIVERS.plural, registry=registry, backoff=1)
    async def unload_everywhere(name: str, **_: Any) -> None:
        """Hold the finalizer until every live node has unloaded the driver."""
        remaining = await controller.wait_unloaded(name, options.deletion_wait)
        if remaining:
            shown = ", ".join(remaining[:5]) + (" ..." if len(remaining) > 5 else "")
            raise kopf.TemporaryError(f"waiting for {len(remaining)} node(s) to unload: {shown}", delay=1)
        log.info("unloaded from every node; releasing the finalizer", extra=fields(storage_driver=name))

    return registry


async def run(options: Options) -> int:
    try:
        credentials = load_credentials(options.kubeconfig, options.context)
    except KubeConfigError as exc:
        log.error("cannot reach the cluster", extra=fields(error=str(exc)))
        return 2
    try:
        options.check()
        if options.metrics:
            metrics.listen_address(options.metrics)
    except ValueError as exc:
        log.error("invalid option", extra=fields(error=str(exc)))
        return 2
    log.info(
        "operator starting",
        extra=fields(
            server=credentials.server,
            credentials=credentials.source,
            version=operator_version(),
            lease_namespace=options.lease_namespace,
        ),
    )
    # SIGTERM and SIGINT stop the operator whenever they come. kopf installs its own handlers for
    # each of its runs and never removes them, so a signal that arrives while the follower's kopf
    # is ending (it is told to stop at the election, and may take seconds) would reach that dead
    # run's handler and be lost: this replica's handlers are put back at once when it is elected.
    stopping = Stopping()

    def own_signals() -> None:
        running = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(sig, stopping.set)

    own_signals()
    async with contextlib.AsyncExitStack() as stack:
        user_agent = f"storage-operator/{operator_version()}"
        kube = await stack.enter_async_context(KubeClient(credentials, user_agent=user_agent))
        elector = None
        controller_kube = kube
        if options.leader_election:
            timing = Timing(
                options.leader_lease_duration, options.leader_renew_deadline, options.leader_retry
            )
            elector = election.LeaderElector(
                kube,
                options.lease_namespace,
                options.leader_lease,
                options.identity,
                timing,
                on_elected=own_signals,
            )
            controller_kube = await stack.enter_async_context(
                election.FencedKubeClient(credentials, fence=elector.fence, user_agent=user_agent)
            )
            kopffence.fence_kopf_writes(elector.deposed, elector.on_lost)
            stack.callback(kopffence.unfence_kopf_writes)
        controller = Controller(controller_kube, options)
        if options.metrics:
            try:
                await stack.enter_async_context(metrics.serve(options.metrics, controller.metrics))
            except OSError as exc:
                log.error(
                    "cannot serve metrics; choose another --metrics address or '' to turn them off",
                    extra=fields(metrics=options.metrics, error=str(exc)),
                )
                return 2
        async with asyncio.TaskGroup() as group:
            background = []
            server = None
            if options.webhook_address:
                keeper = webhook.ConfigurationKeeper(kube, options)
                server = webhook.server(options, keeper.offer)
                background.append(group.create_task(keeper.run(), name="webhook-configuration"))
            if elector is not None:
                background.append(group.create_task(elector.run(), name="leader-election"))
                led = await follow(
                    elector,
                    stopping,
                    controller=controller,
                    credentials=credentials,
                    options=options,
                    server=server,
                    kube=kube,
                )
                if not led or stopping.is_set():  # a signal or kopf failed while following, or as elected
                    for task in background:
                        task.cancel()
                    await elector.release()
                    return exit_code(stopping)
            loop = group.create_task(controller.run(), name="controller")
            sweeper = Sweeper(kube, options.lease_namespace, options.gc_interval)
            sweep = group.create_task(sweeper.run(), name="sweep") if options.gc_interval > 0 else None
            registry = build_registry(
                controller,
                credentials,
                options,
                stop_controller=loop.cancel,
                admission=server,
            )
            if server is not None:
                webhook.register(registry, kube, options)
            # kopf returns when a signal reaches its own handlers, or one reached ours before it
            # installed them (`stopping`), or when it failed (logged, `stopping.failure`).
            await run_kopf(registry, options, stopping)
            loop.cancel()
            if sweep is not None:
                sweep.cancel()
            for task in background:
                task.cancel()
        if elector is not None:
            await elector.release()  # nothing of this replica writes any more
    log.info("operator stopped", extra=fields(**controller.counters))
    return exit_code(stopping)


def exit_code(stopping: Stopping) -> int:
    """0 after a signal; 1 when kopf failed, so that the exit does not look like a clean stop
    and the Deployment's restart shows as an error."""
    return 1 if stopping.failure else 0


def operator_identity() -> Any:  # kopf's Identity, a NewType of str it does not export
    """Who this operator is, in kopf's records: the pod's name in a cluster. kopf's own default
    asks the password database for the user, which has no entry for the image's uid."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}/{os.getpid()}"


async def follow(
    elector: election.LeaderElector,
    stopping: Stopping,
    *,
    controller: Controller,
    credentials: Credentials,
    options: Options,
    server: kopf.WebhookServer | None,
    kube: KubeClient,
) -> bool:
    """Serve the webhook, health and metrics with kopf until this replica is elected (True) or
    told to stop or kopf failed (False); kopf then starts again with the leader's handlers."""
    registry = build_registry(
        controller, credentials, options, stop_controller=lambda: None, admission=server, leading=False
    )
    if server is not None:
        webhook.register(registry, kube, options)
    await run_kopf(registry, options, stopping, elector.leading)
    return elector.leading.is_set()


class Stopping(asyncio.Event):
    """Set when the operator must stop: a signal, or kopf failed (`failure` says why)."""

    failure = ""

    def fail(self, failure: str) -> None:
        self.failure = failure
        self.set()


def kopf_failure(exc: Exception) -> str:
    """kopf's error in one line: its API errors carry the server's message as their first argument."""
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return f"{type(exc).__name__}: {message}"


async def run_kopf(
    registry: kopf.OperatorRegistry, options: Options, stopping: Stopping, *until: asyncio.Event
) -> None:
    """Run kopf until `stopping` or one of `until` is set or a signal reaches kopf's own handlers.
    When a signal stops it, kopf leaves the task that waits for its stop flag pending and then
    waits 5 s for that "hung" task before it returns: the flag is also set at kopf's cleanup, so
    none is left.

    kopf also stops by itself, raising, when one of its watches fails for good: a request it
    retried through `error_backoffs` (about a minute) was still refused, e.g. a 403, or the 404
    of an API server that is starting and does not serve the CRD yet (kopf does not resume a
    failed watcher: nolar/kopf#1077). Then `stopping` fails with kopf's error, logged here, and the
    operator stops as on SIGTERM (its Lease handed over) and exits with 1: a standby, or the
    restarted container, starts afresh with a new list of everything."""
    done = asyncio.Event()

    async def set_done_after(flag: asyncio.Event) -> None:
        await flag.wait()
        done.set()

    @kopf.on.cleanup(registry=registry)
    async def release_stop_flag(**_: Any) -> None:
        done.set()

    waiters = [asyncio.create_task(set_done_after(flag)) for flag in (stopping, *until)]
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=True,
            liveness_endpoint=options.liveness or None,
            stop_flag=done,
            identity=operator_identity(),
        )
    except Exception as exc:  # kopf's own stop (a signal, the flag) returns; anything else is a failure
        failure = kopf_failure(exc)
        log.error(
            "kopf stopped by itself; the operator stops and exits with 1 to be started again",
            extra=fields(error=failure),
        )
        stopping.fail(failure)
    finally:
        for waiter in waiters:
            waiter.cancel()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storage-operator", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {operator_version()}")
    Options.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = Options.from_args(build_parser().parse_args(argv))
    setup_logging("storage-operator", options.log_level, options.log_format)
    webhook.quiet_admissions()
    return asyncio.run(run(options))


if __name__ == "__main__":
    sys.exit(main())
