"""Credentials the way kubectl finds them, loaded by the `kubernetes` package's own config loaders.

The loaders (`KubeConfigMerger`, `KubeConfigLoader`, `InClusterConfigLoader`) read a kubeconfig,
or several merged from `$KUBECONFIG`, with every kind of user kubectl knows: client certificates,
tokens and token files, `exec` credential plugins (EKS, GKE, AKS), `auth-provider` entries (oidc,
gcp), basic auth; and the cluster's CA, `insecure-skip-tls-verify`, `tls-server-name`,
`proxy-url`. This module turns what they load into `Credentials`, which the lean aiohttp
transport in `storage_driver_api.kube` uses; the package's generated client is not used.

Renewal: a token that expires (an exec plugin's `expirationTimestamp`, an auth provider's expiry)
is renewed by running the package's loader again shortly before it expires; a token file (a
kubeconfig `tokenFile`, the in-cluster service-account token, both rotated by the kubelet) is
read again when it changes; and the transport asks for a renewal when the server answers 401.
The package's own refresh hook is not used for this: it renews when less than five minutes are
left, so a token issued for less than that would run the plugin on every request.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = ["Credentials", "KubeConfigError", "TokenSource", "load_credentials", "load_kubeconfig"]

DEFAULT_KUBECONFIG: Final = Path("~/.kube/config")
# The package's own defaults (kubernetes.config.incluster_config), so that importing this module
# does not import the package: the agent's supervisor, which needs no credentials, stays lean.
SERVICE_TOKEN_FILENAME: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SERVICE_CERT_FILENAME: Final = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
# Renew this long before expiry, or a fifth of the token's lifetime if that is shorter.
RENEW_BEFORE: Final = datetime.timedelta(minutes=5)
# A renewal that gave no fresher token (the plugin failed) is tried again after this long.
RETRY_RENEWAL: Final = datetime.timedelta(seconds=10)
WATCHED_FILE_RECHECK: Final = datetime.timedelta(minutes=1)


class KubeConfigError(Exception):
    """No usable credentials were found, or a kubeconfig is malformed."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()  # follows the kubelet's ..data symlink swap
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class TokenSource:
    """The Authorization header the package's loader produced, renewed by running it again.

    `reload` loads into `configuration` again (runs an exec plugin, re-reads a token file);
    `expiry` tells when the loaded token expires (None: it does not); `watched` is a token file
    whose change means the token changed. Thread-safe: the transport renews in a worker thread,
    because an exec plugin may take a second.
    """

    def __init__(
        self,
        configuration: Configuration,
        reload: Callable[[], None],
        expiry: Callable[[], datetime.datetime | None],
        watched: Path | None = None,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ):
        self._configuration = configuration
        self._reload = reload
        self._expiry = expiry
        self._watched = watched
        self._clock = clock
        self._lock = threading.Lock()
        self.renewals = 0
        self._mark()

    def _mark(self) -> None:
        self._loaded_at = self._clock()
        self._watched_state = _file_state(self._watched) if self._watched else None
        expires = self._expiry()
        if expires is None:
            self._renew_at: datetime.datetime | None = None
        else:
            lifetime = max(expires - self._loaded_at, datetime.timedelta(0))
            self._renew_at = expires - min(RENEW_BEFORE, lifetime / 5)
            if self._renew_at <= self._loaded_at:  # the plugin gave no fresher token
                self._renew_at = self._loaded_at + RETRY_RENEWAL

    @property
    def expires_at(self) -> datetime.datetime | None:
        return self._expiry()

    @property
    def renew_at(self) -> datetime.datetime | None:
        """When the token will be renewed (None: only when its file changes or on a 401)."""
        return self._renew_at

    def relogin_at(self) -> datetime.datetime | None:
        """When a client that caches the header (kopf) should ask again: at renewal time, and
        at least every minute while a token file may rotate (client-go's cache of a token file)."""
        if self._watched is None:
            return self._renew_at
        soon = self._clock() + WATCHED_FILE_RECHECK
        return soon if self._renew_at is None else min(soon, self._renew_at)

    def due(self) -> bool:
        if self._renew_at is not None and self._clock() >= self._renew_at:
            return True
        return self._watched is not None and _file_state(self._watched) != self._watched_state

    def renew(self, *, force: bool = False, refused: str | None = None) -> None:
        """Run the loader again if the token is due, or `force`d: the server refused the header
        `refused` (unless another request renewed it meanwhile: many refusals, one renewal)."""
        from kubernetes.config.config_exception import ConfigException

        with self._lock:
            if force and refused is not None and self.header() != refused:
                return
            if not force and not self.due():
                return  # another request renewed it meanwhile
            try:
                self._reload()
            except (ConfigException, OSError) as exc:
                raise KubeConfigError(f"cannot renew the Kubernetes credentials: {exc}") from exc
            self.renewals += 1
            self._mark()

    def header(self) -> str | None:
        value = self._configuration.api_key.get("BearerToken")
        return str(value) if value else None


@dataclass
class Credentials:
    """Everything needed to reach one API server as one user."""

    server: str
    ca_data: bytes | None = None
    ca_file: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    proxy: str | None = None
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    token: str | None = None  # a fixed token (tests, hand-built credentials); loaders use `tokens`
    source: str = ""
    tokens: TokenSource | None = field(default=None, repr=False)

    @property
    def renewable(self) -> bool:
        return self.tokens is not None

    def renewal_due(self) -> bool:
        return self.tokens is not None and self.tokens.due()

    def renew(self, *, force: bool = False, refused: str | None = None) -> None:
        """Renew the token when due, or when the server refused `refused` (blocking: it may run
        an exec plugin)."""
        if self.tokens is not None:
            self.tokens.renew(force=force, refused=refused)

    def authorization(self) -> str | None:
        """The Authorization header value (call `renew` first when `renewal_due`)."""
        if self.tokens is not None:
            return self.tokens.header()
        if self.token:
            return f"Bearer {self.token}"
        return None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data or self.ca_file:
            ctx = ssl.create_default_context(
                cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
            )
        else:
            ctx = ssl.create_default_context()
        if self.client_cert_file and self.client_key_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
        elif self.client_cert_data and self.client_key_data:
            # ssl only loads certificates from files.
            with tempfile.TemporaryDirectory(prefix="sdo-kube-") as tmp:
                cert = Path(tmp, "client.crt")
                key = Path(tmp, "client.key")
                cert.write_bytes(self.client_cert_data)
                key.write_bytes(self.client_key_data)
                key.chmod(0o600)
                ctx.load_cert_chain(cert, key)
        return ctx


def _from_configuration(configuration: Configuration, source: str, tokens: TokenSource | None) -> Credentials:
    host = str(configuration.host or "").rstrip("/")
    if not host:
        raise KubeConfigError(f"{source}: the cluster has no server address")
    proxy = configuration.proxy or None
    if proxy and not str(proxy).startswith(("http://", "https://")):
        raise KubeConfigError(f"{source}: proxy-url {proxy!r} is not supported; use an http:// proxy")
    return Credentials(
        server=host,
        ca_file=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        proxy=proxy,
        client_cert_file=configuration.cert_file or None,
        client_key_file=configuration.key_file or None,
        source=source,
        tokens=tokens if tokens is not None and tokens.header() else None,
    )


def _user(merged: Any, context_name: str) -> Any:
    """The ConfigNode of the context's user (None: no user), which knows the file it came from."""
    user_name = merged["contexts"].get_with_name(context_name)["context"].safe_get("user")
    user = merged["users"].get_with_name(user_name, safe=True) if user_name else None
    return user if user is not None and "user" in user else None


def _token_file(user: Any) -> Path | None:
    """The user's `tokenFile`, resolved against the directory of the file that declared it."""
    if user is None or not user["user"].safe_get("tokenFile"):
        return None
    path = Path(str(user["user"]["tokenFile"])).expanduser()
    return path if path.is_absolute() else Path(user.path or ".").parent / path


def _exec_failure(user: Any, cluster: Any) -> str:
    """Why the user's exec plugin gave nothing: the package only logs it, so run it once more."""
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.exec_provider import ExecProvider

    base = str(Path(user.path).parent) if user.path else None
    try:
        ExecProvider(user["user"]["exec"], base, cluster).run()
    except ConfigException as exc:
        return str(exc)
    except OSError as exc:  # the command does not exist or is not executable
        return f"cannot run {user['user']['exec'].safe_get('command')!r}: {exc}"
    return "its output has neither status.token nor status.clientCertificateData"


def load_kubeconfig(paths: str | Path, context: str | None = None) -> Credentials:
    """Credentials from one kubeconfig, or several joined with `os.pathsep` (merged as kubectl
    does: the first file that names a cluster, user or context wins)."""
    from kubernetes.client import Configuration
    from kubernetes.config import kube_config
    from kubernetes.config.config_exception import ConfigException

    joined = str(paths)
    try:
        merger = kube_config.KubeConfigMerger(joined)
        if merger.config is None:
            raise KubeConfigError(f"kubeconfig {joined}: no such file")
        loader = kube_config.KubeConfigLoader(
            config_dict=merger.config, active_context=context, config_base_path=None
        )
        configuration = Configuration()
        loader.load_and_set(configuration)
        name = loader.current_context["name"]
        user = _user(merger.config, name)
        if (
            user is not None
            and "exec" in user["user"]
            and not configuration.api_key
            and not configuration.cert_file
        ):
            # The package logs an exec plugin's failure and goes on without credentials.
            cluster = merger.config["clusters"].get_with_name(loader.current_context["context"]["cluster"])
            raise KubeConfigError(
                f"kubeconfig {joined} (context {name}): the exec credential plugin failed: "
                f"{_exec_failure(user, cluster['cluster'])}"
            )
    except ConfigException as exc:
        raise KubeConfigError(f"kubeconfig {joined}: {exc}") from exc
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable file, malformed YAML
        raise KubeConfigError(f"cannot read kubeconfig {joined}: {exc}") from exc

    def reload() -> None:
        loader.load_and_set(configuration)

    tokens = TokenSource(
        configuration,
        reload,
        expiry=lambda: getattr(loader, "expiry", None),
        watched=_token_file(user),
    )
    return _from_configuration(configuration, f"kubeconfig {joined} (context {name})", tokens)


def load_in_cluster(
    token_file: str = SERVICE_TOKEN_FILENAME, ca_file: str = SERVICE_CERT_FILENAME
) -> Credentials:
    """The pod's service account, as the package loads it; the token file rotates."""
    from kubernetes.client import Configuration
    from kubernetes.config import incluster_config
    from kubernetes.config.config_exception import ConfigException

    configuration = Configuration()

    def reload() -> None:
        incluster_config.InClusterConfigLoader(
            token_filename=token_file, cert_filename=ca_file, try_refresh_token=False
        ).load_and_set(configuration)

    try:
        reload()
    except ConfigException as exc:
        raise KubeConfigError(f"not running in a cluster: {exc}") from exc
    tokens = TokenSource(configuration, reload, expiry=lambda: None, watched=Path(token_file))
    return _from_configuration(configuration, "in-cluster service account", tokens)


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """Credentials the way kubectl finds them: explicit file, $KUBECONFIG (every file in it),
    ~/.kube/config, in-cluster."""
    if kubeconfig:
        return load_kubeconfig(kubeconfig, context)
    if os.environ.get("KUBECONFIG", "").strip(os.pathsep):
        return load_kubeconfig(os.environ["KUBECONFIG"], context)
    if DEFAULT_KUBECONFIG.expanduser().exists():
        return load_kubeconfig(DEFAULT_KUBECONFIG.expanduser(), context)
    try:
        return load_in_cluster()
    except KubeConfigError:
        raise KubeConfigError(
            "no Kubernetes credentials: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, "
            "or run in a pod with a service account"
        ) from None
