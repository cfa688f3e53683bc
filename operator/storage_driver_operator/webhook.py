"""The admission webhook: kopf's webhook server and `kopf.on.validate` handlers, each a thin
shell around `admission`; and the ValidatingWebhookConfiguration from `webhookconfig`, written
whenever the server's address or certificate changes.

Every replica serves it (leader or not), so that a leader change does not stop the agents.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import kopf
from storage_driver_api.constants import GROUP, STORAGE_DRIVERS, VERSION
from storage_driver_api.kube import CLUSTER_ROLES, PODS, VALIDATING_WEBHOOKS, ApiError, KubeClient
from storage_driver_api.logs import fields

from storage_driver_operator import webhookconfig
from storage_driver_operator.admission import (
    LEASE,
    NODE_DEVICE,
    NODE_DRIVER_CONFIG,
    Caller,
    SourcePolicy,
    Verdict,
    Write,
    caller_from,
    judge_agent_write,
    judge_storage_driver,
)
from storage_driver_operator.options import Options

log = logging.getLogger("storage_driver_operator.webhook")

MAX_PODS = 10_000  # one entry per agent pod; pods are replaced, never edited into another node


class AdmittedAtDebug(logging.Filter):
    """kopf logs every request its webhook admits at INFO ("Webhook 'agent-leases' succeeded."):
    a line per agent write, so per node every 10 s for its Lease alone. Admitting is the webhook's
    steady state, so those lines go to DEBUG; a refusal is still logged as a warning (above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (
            record.levelno == logging.INFO
            and message.startswith("Webhook ")
            and message.endswith(" succeeded.")
        ):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_admissions() -> None:
    """Install AdmittedAtDebug on kopf's per-object logger (where kopf logs handler outcomes)."""
    logging.getLogger("kopf.objects").addFilter(AdmittedAtDebug())


class PodResolver:
    """The agent's Pod for a token's pod name. A pod's uid and spec.nodeName never change, so a
    pod once seen with the token's uid is kept (bounded) and the webhook asks the API once per pod."""

    def __init__(self, kube: KubeClient, namespace: str):
        self.kube = kube
        self.namespace = namespace
        self._known: OrderedDict[tuple[str, str], Mapping[str, Any]] = OrderedDict()

    async def pod_of(self, caller: Caller) -> Mapping[str, Any] | None:
        if not caller.pod_name or not caller.pod_uid or caller.node_name:
            return None
        key = (caller.pod_name, caller.pod_uid)
        if key in self._known:
            self._known.move_to_end(key)
            return self._known[key]
        pod = await self.kube.get_or_none(PODS, caller.pod_name, self.namespace)
        if pod is None:
            return None
        slim = {
            "metadata": {"uid": pod["metadata"].get("uid")},
            "spec": {"nodeName": pod["spec"].get("nodeName")},
        }
        if slim["metadata"]["uid"] == caller.pod_uid and slim["spec"]["nodeName"]:
            self._known[key] = slim
            while len(self._known) > MAX_PODS:
                self._known.popitem(last=False)
        return slim


def _write(resource: str, kwargs: Mapping[str, Any]) -> Write:
    """The admission request as kopf hands it to a handler (body, old, new, operation, subresource)."""
    meta = kwargs["body"].get("metadata") or {}
    old, new = kwargs.get("old"), kwargs.get("new")
    return Write(
        resource=resource,
        operation=str(kwargs.get("operation") or ""),
        name=str(meta.get("name") or ""),
        namespace=meta.get("namespace"),
        subresource=kwargs.get("subresource") or None,
        old=dict(old) if old is not None else None,
        new=dict(new) if new is not None else None,
    )


def _enforce(verdict: Verdict) -> None:
    if not verdict.allowed:
        raise kopf.AdmissionError(verdict.message, code=403)


def register(registry: kopf.OperatorRegistry, kube: KubeClient, options: Options) -> None:
    """The validating handlers, one per entry of the webhook configuration (kopf routes by id)."""
    agents = frozenset(options.agent_usernames)
    pods = PodResolver(kube, options.lease_namespace)
    policy = SourcePolicy(
        config_map_namespaces=frozenset(options.config_map_namespaces)
        if options.config_map_namespaces
        else None,
        require_sha256=options.require_sha256,
    )

    def agent_handler(resource: str) -> Callable[..., Any]:
        async def check(**kwargs: Any) -> None:
            caller = caller_from(kwargs["userinfo"], agents)
            if not caller.is_agent:
                return  # RBAC decides for everyone else; no API call on their path
            write = _write(resource, kwargs)
            try:
                pod = await pods.pod_of(caller)
            except (ApiError, OSError, TimeoutError) as exc:
                raise kopf.AdmissionError(
                    f"{write.describe()} refused: cannot look up the agent's pod: {exc}", 503
                ) from exc
            verdict = judge_agent_write(write, caller, pod, options.lease_namespace)
            if not verdict.allowed:
                log.warning(
                    "refused an agent's write", extra=fields(user=caller.username, reason=verdict.message)
                )
            _enforce(verdict)

        return check

    common: dict[str, Any] = {"registry": registry, "subresource": "*", "persistent": True}
    kopf.on.validate(GROUP, VERSION, NODE_DEVICE, id=webhookconfig.AGENT_NODE_DEVICES, **common)(
        agent_handler(NODE_DEVICE)
    )
    kopf.on.validate(
        GROUP, VERSION, NODE_DRIVER_CONFIG, id=webhookconfig.AGENT_NODE_DRIVER_CONFIGS, **common
    )(agent_handler(NODE_DRIVER_CONFIG))
    for lease_id in (webhookconfig.AGENT_LEASES, webhookconfig.OPERATOR_LEASES):
        kopf.on.validate("coordination.k8s.io", "v1", LEASE, id=lease_id, **common)(agent_handler(LEASE))

    @kopf.on.validate(
        GROUP,
        VERSION,
        STORAGE_DRIVERS.plural,
        id=webhookconfig.STORAGE_DRIVERS,
        **common,
        ignore_failures=True,
    )
    def check_storage_driver(**kwargs: Any) -> None:
        if kwargs.get("subresource"):
            return  # status: the operator's own
        _enforce(judge_storage_driver(_write(STORAGE_DRIVERS.plural, kwargs), policy))


class ConfiguringServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server that also hands every client config it serves under (at start,
    and after its certificate files change) to `on_config`."""

    def __init__(self, *, on_config: Callable[[Mapping[str, Any]], None], **kwargs: Any):
        super().__init__(**kwargs)
        self.on_config = on_config

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for client_config in super().__call__(fn):
            self.on_config(client_config)
            yield client_config


class ConfigurationKeeper:
    """Writes the ValidatingWebhookConfiguration for the latest client config, retrying until the
    API server takes it (every replica writes the same content)."""

    def __init__(self, kube: KubeClient, options: Options):
        self.kube = kube
        self.options = options
        self.service = (
            webhookconfig.ServiceRef.parse(options.webhook_service) if options.webhook_service else None
        )
        self.latest: Mapping[str, Any] | None = None
        self.changed = asyncio.Event()
        self.written = asyncio.Event()

    def offer(self, client_config: Mapping[str, Any]) -> None:
        self.latest = client_config
        self.changed.set()

    async def run(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            delay = 1.0
            while self.latest is not None:
                try:
                    await self.apply(self.latest)
                    break
                except (ApiError, OSError, TimeoutError) as exc:
                    log.warning("cannot write the webhook configuration", extra=fields(error=str(exc)))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)

    async def apply(self, served: Mapping[str, Any]) -> None:
        name = self.options.webhook_configuration
        wanted = webhookconfig.configuration(name, served, service=self.service)
        if self.options.webhook_owner:
            # Cluster-scoped, so only a cluster-scoped owner can take it along when it goes.
            owner = await self.kube.get(CLUSTER_ROLES, self.options.webhook_owner)
            wanted["metadata"]["ownerReferences"] = [webhookconfig.owner_reference(owner)]
        try:
            await self.kube.create(VALIDATING_WEBHOOKS, wanted)
        except ApiError as exc:
            if not exc.conflict:
                raise
            patch = {"webhooks": wanted["webhooks"]}
            if "ownerReferences" in wanted["metadata"]:
                patch["metadata"] = {"ownerReferences": wanted["metadata"]["ownerReferences"]}
            await self.kube.patch(VALIDATING_WEBHOOKS, name, patch)
        self.written.set()
        log.info("webhook configuration written", extra=fields(configuration=name, url=served.get("url")))


def server(options: Options, on_config: Callable[[Mapping[str, Any]], None]) -> ConfiguringServer:
    host, _, port = options.webhook_address.rpartition(":")
    return ConfiguringServer(
        on_config=on_config,
        addr=host or None,
        port=int(port),
        host=options.webhook_host or None,
        certfile=options.webhook_cert,
        pkeyfile=options.webhook_key,
        cafile=options.webhook_ca or None,
    )
