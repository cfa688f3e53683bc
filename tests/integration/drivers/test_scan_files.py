"""Static scan of real files and directories, and `sdctl scan`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
from pathlib import Path

from storage_driver_sdk.scan import package_sha256, scan_directory, scan_path

from tests.harness.drivers import SIDE_EFFECT_DRIVER, write_probe
from tests.harness.processes import console_script

REPO = Path(__file__).resolve().parents[3]


def test_a_file_with_import_time_side_effects_is_scanned_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    driver = tmp_path / "side_effects.py"
    driver.write_text(SIDE_EFFECT_DRIVER.replace("__MARKER__", repr(str(marker))))
    result = scan_path(driver)
    assert result.error is None and result.declaration is not None
    assert (result.declaration.driver_name, result.declaration.version) == ("Side Effects", "0.1.0")
    assert result.sha256 == hashlib.sha256(driver.read_bytes()).hexdigest()
    assert not marker.exists(), "scanning executed the file"
    # Control: running the same file does have the side effect (so the check above can fail).
    ran = subprocess.run(
        [str(Path(console_script("storage-agent")).parent / "python"), str(driver)], check=False
    )
    assert ran.returncode == 99 and marker.read_text() == "imported!"


def test_a_directory_scan_reports_broken_files_and_goes_on(tmp_path: Path) -> None:
    write_probe(tmp_path, "a_good.py")
    (tmp_path / "b_syntax.py").write_text("def broken(:\n")
    (tmp_path / "c_dynamic.py").write_text(
        "from storage_driver_sdk import storage_driver\nV = '1.0.0'\n@storage_driver('D', version=V)\nclass D: pass\n"
    )
    (tmp_path / "d_helper.py").write_text("HELPER = 1\n")
    (tmp_path / "notes.txt").write_text("not python")
    (tmp_path / ".hidden.py").write_text("def broken(:\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.py").write_text("def broken(:\n")
    package = tmp_path / "e_package"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "impl.py").write_text(
        textwrap.dedent("""
        from storage_driver_sdk import storage_driver, DeviceType
        @storage_driver("Packaged", version="2.0.0", supported_devices=[DeviceType.SCSI_DISK])
        class Packaged:
            pass
    """)
    )
    nested = tmp_path / "vendor"
    nested.mkdir()
    write_probe(nested, "f_nested.py", driver_name="Nested Probe")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.py"
    write_probe(outside.parent, outside.name)
    (tmp_path / "g_link.py").symlink_to(outside)

    results = {r.file: r for r in scan_directory(tmp_path)}
    assert sorted(results) == [
        "a_good.py",
        "b_syntax.py",
        "c_dynamic.py",
        "d_helper.py",
        "e_package",
        "vendor/f_nested.py",
    ]
    assert results["a_good.py"].ok
    assert results["b_syntax.py"].error == "syntax error at line 1: invalid syntax"
    assert "version: 'V' is not a literal" in str(results["c_dynamic.py"].error)
    assert results["d_helper.py"].error == "no class decorated with @storage_driver(...) at module level"
    packaged = results["e_package"].declaration
    assert packaged is not None and (packaged.driver_name, packaged.module, packaged.class_name) == (
        "Packaged",
        "sub.impl",
        "Packaged",
    )
    assert results["e_package"].sha256 == package_sha256(package)
    assert results["vendor/f_nested.py"].declaration is not None


def test_package_sha256_matches_the_shell_recipe(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "Zed").mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (package / "a.py").write_text("y = 2\n")
    (package / "Zed" / "b.py").write_text("z = 3\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    shell = subprocess.run(
        "find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -name '.*' | LC_ALL=C sort | xargs sha256sum | sha256sum",
        shell=True, cwd=package, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert package_sha256(package) == shell.stdout.split()[0]


def test_sdctl_scan_prints_a_table_and_json() -> None:
    examples = REPO / "examples" / "drivers"
    table = subprocess.run(
        [console_script("sdctl"), "scan", str(examples)], capture_output=True, text=True, check=False
    )
    assert table.returncode == 0, table.stderr
    assert (
        "loop_info.py" in table.stdout
        and "Loop Info Driver" in table.stdout
        and "Queue Settings Driver" in table.stdout
    )
    listed = subprocess.run(
        [console_script("sdctl"), "scan", "--json", str(examples / "loop_info.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    (entry,) = json.loads(listed.stdout)
    assert entry["driverName"] == "Loop Info Driver" and entry["supportedDevices"] == ["loop"]
    assert entry["sha256"] == hashlib.sha256((examples / "loop_info.py").read_bytes()).hexdigest()


def test_sdctl_scan_fails_on_broken_files_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def broken(:\n")
    broken = subprocess.run(
        [console_script("sdctl"), "scan", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert broken.returncode == 1
    assert "broken.py: syntax error at line 1" in broken.stdout
    missing = subprocess.run(
        [console_script("sdctl"), "scan", str(tmp_path / "nope")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
