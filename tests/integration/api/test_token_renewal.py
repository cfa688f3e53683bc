"""The client renews refused credentials once, against the real API server: an exec plugin whose
first token the server does not know is run again after the 401, and the request succeeds;
credentials that cannot be renewed fail with the 401."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
import yaml
from storage_driver_api.kube import NODES, ApiError, Credentials, KubeClient, load_kubeconfig

from tests.harness import accounts, localcluster

PLUGIN = """#!{python}
import json, os
runs = {runs!r}
n = len(open(runs).read().splitlines()) + 1 if os.path.exists(runs) else 1
open(runs, "a").write("run\\n")
token = "not-a-token" if n == 1 else open({token!r}).read().strip()
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {{"token": token, "expirationTimestamp": "2999-01-01T00:00:00Z"}}}}))
"""


async def test_a_refused_token_is_renewed_once_and_the_request_retried(
    kube: KubeClient, cluster: localcluster.ClusterConfig, tmp_path: Path
) -> None:
    # The token controller's token of kube-system's default account (rights: none needed for a 403).
    token = await accounts.service_account_token(kube, "kube-system", "default")
    (tmp_path / "token").write_text(token)
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        PLUGIN.format(python=sys.executable, runs=str(tmp_path / "runs"), token=str(tmp_path / "token"))
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority": str(cluster.pki / "ca.crt"),
                        },
                    }
                ],
                "users": [
                    {
                        "name": "u",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1beta1",
                                "command": str(plugin),
                            }
                        },
                    }
                ],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    creds = load_kubeconfig(config)
    assert creds.authorization() == "Bearer not-a-token"
    async with KubeClient(creds) as client:
        # Authenticated now (a 403 for this account, not a 401): the renewed token was used.
        with pytest.raises(ApiError) as refused:
            await client.list(NODES)
        assert refused.value.status == 403
        assert "system:serviceaccount:kube-system:default" in refused.value.message
    assert len((tmp_path / "runs").read_text().splitlines()) == 2
    assert creds.tokens is not None and creds.tokens.renewals == 1


async def test_credentials_that_cannot_be_renewed_fail_with_the_401(
    cluster: localcluster.ClusterConfig,
) -> None:
    creds = Credentials(
        server=cluster.server, ca_data=(cluster.pki / "ca.crt").read_bytes(), token="not-a-token"
    )
    async with KubeClient(creds) as client:
        with pytest.raises(ApiError) as refused:
            await client.list(NODES)
    assert refused.value.status == 401
