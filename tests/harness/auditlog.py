"""The API server's audit log of writes (the local cluster writes one): who changed what, in the
order the API server completed the requests. Tests count writes per caller from it, which the
callers' own logs cannot prove (a caller may not log a write it did not mean to make)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.harness.daemons import ClusterConfig

# Writes to the project's resources and to Leases, at Metadata level (who, what, the answer; no
# bodies); nothing else, to keep the log small over a whole test run.
POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
    resources:
      - group: storage.datawarehouse.io
      - group: coordination.k8s.io
  - level: None
"""
POD_NAME = "authentication.kubernetes.io/pod-name"


def policy_file(cfg: ClusterConfig) -> Path:
    path = cfg.root / "audit-policy.yaml"
    path.write_text(POLICY)
    return path


def log_file(cfg: ClusterConfig) -> Path:
    return cfg.root / "logs" / "audit.log"


@dataclass(frozen=True)
class Write:
    """One completed write request."""

    verb: str
    resource: str  # plural, with /subresource
    namespace: str
    name: str
    username: str
    pod: str  # the pod a bound token names, else ""
    code: int

    @property
    def succeeded(self) -> bool:
        return 200 <= self.code < 300


class AuditLog:
    """The writes the API server completed after `mark()`."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.path = log_file(cfg)
        if not self.path.exists():
            raise AssertionError(
                f"no audit log at {self.path}: the API server was started by an older harness; "
                "restart the local cluster (make cluster-down cluster-up)"
            )
        self.offset = self.path.stat().st_size

    def writes(self) -> list[Write]:
        if self.path.stat().st_size < self.offset:
            raise AssertionError(f"{self.path} was rotated since the mark: run the test again")
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            lines = handle.read().splitlines()
        found = []
        for line in lines:
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete":
                continue
            ref = event.get("objectRef") or {}
            user = event.get("user") or {}
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            found.append(
                Write(
                    verb=event["verb"],
                    resource=resource,
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    username=user.get("username", ""),
                    pod=((user.get("extra") or {}).get(POD_NAME) or [""])[0],
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                )
            )
        return found
