"""Record the part of a host's /sys, /dev and /run/udev that the device probe reads.

    python -m tests.harness.record_host tests/fixtures/hosts/<name> [--host-root /]

Runs the agent's probe through a HostRoot that copies every file it reads and every symlink it
follows into the output tree, so that unit tests can run the same probe on it later. Only text
is recorded: a binary attribute (a SCSI disk's vpd_pg80) is left out and reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from storage_driver_agent.devices.probe import Probe
from storage_driver_agent.devices.sysfs import HostRoot


class RecordingHostRoot(HostRoot):
    def __init__(self, root: str | Path, out: Path):
        super().__init__(root)
        self.out = out
        self.skipped: list[str] = []

    def _record(self, host_path: str, *, leaf: bool) -> None:
        """Recreate every symlink on the way to host_path, and the file itself when `leaf`."""
        parts = [p for p in host_path.split("/") if p]
        current = "/"
        for index, part in enumerate(parts):
            current = current.rstrip("/") + "/" + part
            local = self.local(current)
            target = self.out / current.lstrip("/")
            if local.is_symlink():
                link = str(local.readlink())
                if not target.is_symlink():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(link)
                # Continue below the link's target, so that what lies there is recorded too.
                rest = "/".join(parts[index + 1 :])
                resolved = self.host(os.path.realpath(local))
                self._record(resolved + ("/" + rest if rest else ""), leaf=leaf)
                return
        local = self.local(current)
        target = self.out / current.lstrip("/")
        if leaf and local.is_file() and not target.exists():
            data = local.read_bytes()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.skipped.append(current)
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        elif local.is_dir():
            target.mkdir(parents=True, exist_ok=True)

    def read_text(self, host_path: str) -> str:
        text = super().read_text(host_path)
        self._record(host_path, leaf=True)
        return text

    def read_bytes(self, host_path: str) -> bytes:
        data = super().read_bytes(host_path)
        self._record(host_path, leaf=True)
        return data

    def readlink(self, host_path: str) -> str | None:
        target = super().readlink(host_path)
        if target is not None:
            self._record(host_path, leaf=False)
        return target

    def resolve(self, host_path: str) -> str:
        self._record(host_path, leaf=False)
        return super().resolve(host_path)

    def listdir(self, host_path: str) -> list[str]:
        entries = super().listdir(host_path)
        for entry in entries:
            if self.local(f"{host_path}/{entry}").is_symlink():
                self._record(f"{host_path}/{entry}", leaf=False)
        return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="record_host", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="fixture directory to create (must not exist)")
    parser.add_argument("--host-root", default="/", help="the host to record (default: /)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; remove it first")
    args.out.mkdir(parents=True)
    host = RecordingHostRoot(args.host_root, args.out)
    try:
        devices = Probe(host).all()
    except BaseException:
        shutil.rmtree(args.out)
        raise
    print(f"recorded {len(devices)} devices into {args.out}: {', '.join(sorted(devices))}")
    for path in host.skipped:
        print(f"left out (binary): {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
