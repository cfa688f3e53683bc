"""Static scan of driver source: the decorator's literal arguments, read without running anything."""

from __future__ import annotations

import contextlib
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_driver_sdk import MinimumPlatform
from storage_driver_sdk.scan import Declaration, ScanError, parse_declarations, single_declaration


def parse(source: str) -> list[Declaration]:
    return parse_declarations(textwrap.dedent(source), "driver.py")


def test_reads_every_literal_argument() -> None:
    (found,) = parse(
        """
        from storage_driver_sdk import DeviceType, MinimumPlatform, storage_driver

        @storage_driver(
            "Loop Info",
            version="1.2.0",
            supported_devices=[DeviceType.LOOP, "virtio-block"],
            description="reads sysfs",
            minimum_platform=MinimumPlatform(kernel="5.10", os="linux", architectures=["amd64", "arm64"]),
            auto_load=False,
        )
        class LoopInfo:
            pass
        """
    )
    assert found.class_name == "LoopInfo"
    assert found.driver_name == "Loop Info"
    assert found.version == "1.2.0"
    assert found.supported_devices == ("loop", "virtio-block")
    assert found.description == "reads sysfs"
    assert found.auto_load is False
    assert found.minimum_platform == MinimumPlatform(
        kernel="5.10", os="linux", architectures=("amd64", "arm64")
    )
    assert found.line == 12  # the class statement, after its decorator


@pytest.mark.parametrize(
    "header",
    [
        "import storage_driver_sdk as sdk\nDEC = 'sdk.storage_driver'",
        "from storage_driver_sdk import storage_driver as sd, DeviceType as DT",
        "import storage_driver_sdk",
    ],
)
def test_aliases_of_the_sdk_are_followed(header: str) -> None:
    decorator = {
        "import storage_driver_sdk as sdk\nDEC = 'sdk.storage_driver'": (
            "sdk.storage_driver",
            "sdk.DeviceType",
        ),
        "from storage_driver_sdk import storage_driver as sd, DeviceType as DT": ("sd", "DT"),
        "import storage_driver_sdk": ("storage_driver_sdk.storage_driver", "storage_driver_sdk.DeviceType"),
    }[header]
    source = f"{header}\n\n@{decorator[0]}('Aliased', supported_devices=[{decorator[1]}.NVME_NAMESPACE])\nclass D:\n    pass\n"
    (found,) = parse_declarations(source, "d.py")
    assert found.driver_name == "Aliased"
    assert found.supported_devices == ("nvme-namespace",)


def test_kernel_string_as_minimum_platform() -> None:
    (found,) = parse("@storage_driver('K', minimum_platform='6.1')\nclass K: pass\n")
    assert found.minimum_platform == MinimumPlatform(kernel="6.1")


def test_undecorated_and_other_decorators_are_ignored() -> None:
    assert parse("import dataclasses\n@dataclasses.dataclass\nclass A: pass\nclass B: pass\n") == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("@storage_driver(NAME)\nclass D: pass\n", "name: 'NAME' is not a literal"),
        (
            "@storage_driver('D', version=get_version())\nclass D: pass\n",
            "version: 'get_version\\(\\)' is not a literal",
        ),
        (
            "@storage_driver('D', supported_devices=[DeviceType.FLOPPY])\nclass D: pass\n",
            "DeviceType has no member FLOPPY",
        ),
        ("@storage_driver('D', **opts)\nclass D: pass\n", r"\*\*kwargs"),
        ("@storage_driver('D', colour='red')\nclass D: pass\n", "unknown @storage_driver argument"),
        ("@storage_driver(version='1.0.0')\nclass D: pass\n", "needs the driver's name"),
        ("@storage_driver\nclass D: pass\n", "a bare @storage_driver declares nothing"),
        (
            "@storage_driver('D', version='one')\nclass D: pass\n",
            r"class D \(line 2\): version: 'one' is not a semantic version",
        ),
        ("def broken(:\n", "syntax error at line 1"),
        ("x = '\0'\n", "cannot parse|syntax error"),
    ],
)
def test_unreadable_declarations_say_why(source: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        parse_declarations(source, "d.py")


def test_exactly_one_driver_per_file() -> None:
    two = parse("@storage_driver('A')\nclass A: pass\n@storage_driver('B')\nclass B: pass\n")
    with pytest.raises(ScanError, match=r"declares 2 drivers \(A \(line 2\), B \(line 4\)\)"):
        single_declaration(two)
    with pytest.raises(ScanError, match="no class decorated"):
        single_declaration([])


def test_nested_classes_are_not_drivers() -> None:
    # The host loads module-level classes only; a nested one could never be loaded.
    assert parse("class Outer:\n    @storage_driver('Inner')\n    class Inner: pass\n") == []


@given(st.text(max_size=200))
def test_any_text_either_parses_or_gives_a_scan_error(text: str) -> None:
    with contextlib.suppress(ScanError):
        parse_declarations(text, "fuzz.py")
