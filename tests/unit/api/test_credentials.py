"""Credentials loaded by the kubernetes package's loaders: what each kubeconfig shape yields, and
when a token is renewed (a fake clock; the exec plugin is a real script that counts its runs)."""

from __future__ import annotations

import base64
import datetime
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_api.credentials import (
    Credentials,
    KubeConfigError,
    TokenSource,
    load_credentials,
    load_in_cluster,
    load_kubeconfig,
)

UTC = datetime.UTC


def kubeconfig(
    path: Path,
    users: dict[str, dict[str, Any]],
    *,
    current: str | None = None,
    clusters: dict[str, dict[str, Any]] | None = None,
) -> Path:
    clusters = clusters or {"c": {"server": "https://127.0.0.1:6443/", "insecure-skip-tls-verify": True}}
    cluster = next(iter(clusters))
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": f"ctx-{n}", "context": {"cluster": cluster, "user": n}} for n in users],
    }
    if current:
        config["current-context"] = current
    path.write_text(yaml.safe_dump(config))
    return path


def exec_plugin(tmp_path: Path, *, lifetime_s: int | None, fail: bool = False) -> tuple[Path, Path]:
    """A plugin that prints an ExecCredential with token-N (N = its run count)."""
    counter = tmp_path / "runs"
    script = tmp_path / "plugin.py"
    expiry = (
        ""
        if lifetime_s is None
        else f"status['expirationTimestamp'] = (now + timedelta(seconds={lifetime_s}))"
        ".strftime('%Y-%m-%dT%H:%M:%SZ')"
    )
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\nfrom datetime import datetime, timedelta, timezone\n"
        f"counter = {str(counter)!r}\n"
        "n = int(open(counter).read()) + 1 if __import__('os').path.exists(counter) else 1\n"
        "open(counter, 'w').write(str(n))\n"
        + ("sys.stderr.write('no session: log in first'); sys.exit(3)\n" if fail else "")
        + "now = datetime.now(timezone.utc)\n"
        "status = {'token': f'token-{n}'}\n"
        f"{expiry}\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1', 'kind': 'ExecCredential',"
        " 'status': status}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, counter


def exec_user(script: Path) -> dict[str, Any]:
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(script)}}


def runs(counter: Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(tz=UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def test_a_token_user_gives_its_token_and_the_cluster_settings(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        {"alice": {"token": "abc"}},
        current="ctx-alice",
        clusters={
            "c": {
                "server": "https://10.0.0.1:6443/",
                "insecure-skip-tls-verify": True,
                "tls-server-name": "api.example",
                "proxy-url": "http://proxy.example:3128",
            }
        },
    )
    creds = load_kubeconfig(path)
    assert creds.server == "https://10.0.0.1:6443"
    assert creds.authorization() == "Bearer abc"
    assert creds.insecure
    assert creds.tls_server_name == "api.example"
    assert creds.proxy == "http://proxy.example:3128"
    assert "ctx-alice" in creds.source


def test_inline_certificates_become_files_the_ssl_context_loads(tmp_path: Path) -> None:
    import dataclasses

    from tests.harness.localcluster import ClusterConfig, ensure_pki

    # The harness's generator, for a real CA and client pair.
    cluster = dataclasses.replace(ClusterConfig.from_env(), root=tmp_path / "cluster")
    ensure_pki(cluster)

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    path = kubeconfig(
        tmp_path / "config",
        {
            "admin": {
                "client-certificate-data": b64(cluster.pki / "admin.crt"),
                "client-key-data": b64(cluster.pki / "admin.key"),
            }
        },
        current="ctx-admin",
        clusters={
            "c": {"server": "https://127.0.0.1:1", "certificate-authority-data": b64(cluster.pki / "ca.crt")}
        },
    )
    creds = load_kubeconfig(path)
    assert creds.authorization() is None
    assert (
        creds.client_cert_file
        and Path(creds.client_cert_file).read_bytes() == (cluster.pki / "admin.crt").read_bytes()
    )
    assert creds.ca_file and Path(creds.ca_file).read_bytes() == (cluster.pki / "ca.crt").read_bytes()
    assert not isinstance(creds.ssl_context(), bool)


def test_kubeconfig_holding_several_files_merges_them_first_wins(tmp_path: Path, monkeypatch: Any) -> None:
    first = kubeconfig(tmp_path / "a", {"alice": {"token": "from-a"}}, current="ctx-bob")
    second = kubeconfig(tmp_path / "b", {"alice": {"token": "shadowed"}, "bob": {"token": "from-b"}})
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{tmp_path / 'missing'}{os.pathsep}{second}")
    assert load_credentials().authorization() == "Bearer from-b"  # a's current-context, b's user
    assert load_credentials(context="ctx-alice").authorization() == "Bearer from-a"
    with pytest.raises(KubeConfigError, match="ctx-nobody"):
        load_credentials(context="ctx-nobody")


def test_an_explicit_kubeconfig_wins_over_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    env = kubeconfig(tmp_path / "env", {"env": {"token": "env"}}, current="ctx-env")
    explicit = kubeconfig(tmp_path / "explicit", {"flag": {"token": "flag"}}, current="ctx-flag")
    monkeypatch.setenv("KUBECONFIG", str(env))
    assert load_credentials(str(explicit)).authorization() == "Bearer flag"


def test_missing_and_malformed_kubeconfigs_say_which_file(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="no such file"):
        load_kubeconfig(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.write_text("clusters: [unclosed")
    with pytest.raises(KubeConfigError, match=str(bad)):
        load_kubeconfig(bad)
    nocontext = kubeconfig(tmp_path / "nocontext", {"alice": {"token": "x"}})
    with pytest.raises(KubeConfigError, match="current-context"):
        load_kubeconfig(nocontext)


def test_a_socks_proxy_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        {"a": {"token": "x"}},
        current="ctx-a",
        clusters={"c": {"server": "https://h:1", "proxy-url": "socks5://h:1080"}},
    )
    with pytest.raises(KubeConfigError, match=r"proxy-url .*socks5.*http://"):
        load_kubeconfig(path)


def test_an_exec_plugin_runs_once_until_its_token_nears_expiry(tmp_path: Path) -> None:
    script, counter = exec_plugin(tmp_path, lifetime_s=600)
    creds = load_kubeconfig(kubeconfig(tmp_path / "config", {"eks": exec_user(script)}, current="ctx-eks"))
    assert creds.authorization() == "Bearer token-1"
    assert runs(counter) == 1
    tokens = creds.tokens
    assert tokens is not None and tokens.expires_at is not None and tokens.renew_at is not None
    # Renewed when a fifth of its life (here less than five minutes) is left, not on every request.
    assert (
        datetime.timedelta(seconds=100)
        < tokens.expires_at - tokens.renew_at
        <= datetime.timedelta(seconds=121)
    )
    assert not creds.renewal_due()
    creds.renew()
    assert runs(counter) == 1
    # The server refused token-1: the plugin runs again, once for all the requests refused it.
    creds.renew(force=True, refused="Bearer token-1")
    assert runs(counter) == 2 and creds.authorization() == "Bearer token-2"
    creds.renew(force=True, refused="Bearer token-1")
    assert runs(counter) == 2
    # A refusal without knowing of which token (kopf's login after a 401) always renews.
    creds.renew(force=True)
    assert runs(counter) == 3


def test_a_short_lived_exec_token_is_renewed_by_running_the_plugin_again(tmp_path: Path) -> None:
    script, counter = exec_plugin(tmp_path, lifetime_s=100)
    clock = FakeClock()
    path = kubeconfig(tmp_path / "config", {"eks": exec_user(script)}, current="ctx-eks")
    creds = load_kubeconfig(path)
    assert creds.tokens is not None
    # Rebuild the token source on the fake clock around the same loader.
    tokens = creds.tokens
    tokens._clock = clock
    tokens._mark()
    assert not tokens.due()
    clock.now += datetime.timedelta(seconds=79)
    assert not tokens.due()
    clock.now += datetime.timedelta(seconds=2)
    assert tokens.due()
    tokens.renew()
    assert runs(counter) == 2
    assert creds.authorization() == "Bearer token-2"
    assert not tokens.due()


def test_a_failing_plugin_is_an_error_naming_what_it_printed(tmp_path: Path) -> None:
    script, _ = exec_plugin(tmp_path, lifetime_s=60, fail=True)
    path = kubeconfig(tmp_path / "config", {"eks": exec_user(script)}, current="ctx-eks")
    with pytest.raises(KubeConfigError, match=r"exec credential plugin failed: .*no session: log in first"):
        load_kubeconfig(path)
    missing = kubeconfig(
        tmp_path / "missing", {"eks": exec_user(tmp_path / "aws-iam-authenticator")}, current="ctx-eks"
    )
    with pytest.raises(KubeConfigError, match="aws-iam-authenticator"):
        load_kubeconfig(missing)


def test_a_renewal_that_fails_keeps_the_old_token_and_waits_before_trying_again() -> None:
    clock = FakeClock()
    attempts: list[datetime.datetime] = []

    class Config:
        api_key = {"BearerToken": "Bearer old"}

    expiry = clock.now + datetime.timedelta(seconds=20)

    def reload() -> None:
        attempts.append(clock.now)  # the package logs the plugin's failure and keeps the token

    tokens = TokenSource(Config(), reload, lambda: expiry, clock=clock)  # type: ignore[arg-type]
    clock.now = expiry - datetime.timedelta(seconds=1)
    tokens.renew()
    assert attempts == [clock.now]
    assert tokens.header() == "Bearer old"
    assert not tokens.due()
    clock.now += datetime.timedelta(seconds=10)
    assert tokens.due()


def test_a_token_file_is_read_again_when_it_rotates(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    path = kubeconfig(tmp_path / "config", {"sa": {"tokenFile": "token"}}, current="ctx-sa")
    creds = load_kubeconfig(path)  # tokenFile relative to the kubeconfig's directory
    assert creds.authorization() == "Bearer first"
    assert not creds.renewal_due()
    # As the kubelet rotates a projected token: a new file swapped in.
    new = tmp_path / "token.new"
    new.write_text("second")
    new.replace(token)
    assert creds.renewal_due()
    creds.renew()
    assert creds.authorization() == "Bearer second"
    assert not creds.renewal_due()


def test_in_cluster_credentials_come_from_the_service_account_files(tmp_path: Path, monkeypatch: Any) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-1")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = load_in_cluster(str(token), str(ca))
    assert creds.server == "https://[fd00::1]:443"
    assert creds.ca_file == str(ca)
    assert creds.authorization() == "bearer sa-1"
    token.write_text("sa-2")
    assert creds.renewal_due()
    creds.renew()
    assert creds.authorization() == "bearer sa-2"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(KubeConfigError, match="not running in a cluster"):
        load_in_cluster(str(token), str(ca))


def test_no_credentials_anywhere_names_every_place_looked(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KubeConfigError, match=r"--kubeconfig.*KUBECONFIG.*~/.kube/config.*service account"):
        load_credentials()


def test_static_credentials_built_by_hand_still_work() -> None:
    assert Credentials(server="http://x", token="t").authorization() == "Bearer t"
    assert not Credentials(server="http://x").renewable
    assert json.dumps(Credentials(server="http://x").ssl_context())  # False: plain http
