"""Static scan: what a driver file declares, read from its syntax tree without importing it.

The decorator's arguments are evaluated as literals (strings, numbers, booleans, lists, dicts,
`DeviceType.X`, `MinimumPlatform(...)` with literal arguments); nothing in the file runs. A
file that cannot be read, parsed or understood gives a result with `error` set, and the scan
goes on with the next file.

A driver is a `.py` file or a package directory (a directory with `__init__.py`) declaring
exactly one `@storage_driver(...)` class at module level. The sha256 of a file is the hash of
its bytes; the sha256 of a package is the hash of its manifest (see `package_sha256`).
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from storage_driver_sdk.decorator import DriverDeclarationError, MinimumPlatform, check_declaration
from storage_driver_sdk.devices import DeviceType
from storage_driver_sdk.digest import (
    MAX_FILE_BYTES,
    irregular_refused,
    package_files,
    package_irregular,
    package_sha256,
)

MAX_DEPTH: Final = 4
SDK_MODULES: Final = ("storage_driver_sdk", "storage_driver_sdk.decorator", "storage_driver_sdk.devices")
DECORATOR: Final = "storage_driver"


class ScanError(Exception):
    """Why a file is not a usable driver."""


@dataclass(frozen=True)
class Declaration:
    """One `@storage_driver(...)` class as written in the source."""

    class_name: str
    line: int
    driver_name: str
    version: str | None
    supported_devices: tuple[str, ...]
    description: str
    auto_load: bool
    minimum_platform: MinimumPlatform | None
    module: str = ""  # dotted module inside a package; "" for a single file or the package's __init__


@dataclass(frozen=True)
class ScannedDriver:
    """The scan result for one file or package: its declaration, or the reason it has none."""

    file: str  # relative to the scanned directory, '/'-separated
    sha256: str
    declaration: Declaration | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.declaration is not None


# --- parsing (pure) --------------------------------------------------------------------------


@dataclass
class _Aliases:
    decorators: set[str]
    device_types: set[str]
    platforms: set[str]
    modules: set[str]  # names bound to the SDK package itself


def _aliases(tree: ast.Module) -> _Aliases:
    found = _Aliases({DECORATOR}, {"DeviceType"}, {"MinimumPlatform"}, set())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in SDK_MODULES:
            for alias in node.names:
                bound = alias.asname or alias.name
                if alias.name == DECORATOR:
                    found.decorators.add(bound)
                elif alias.name == "DeviceType":
                    found.device_types.add(bound)
                elif alias.name == "MinimumPlatform":
                    found.platforms.add(bound)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in SDK_MODULES:
                    found.modules.add(alias.asname or alias.name)
    return found


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _refers_to(node: ast.expr, names: set[str], attr: str, aliases: _Aliases) -> bool:
    """True when node is one of `names`, or `<sdk module alias>.<attr>`."""
    dotted = _dotted(node)
    if dotted is None:
        return False
    if dotted in names:
        return True
    head, _, tail = dotted.rpartition(".")
    return tail == attr and head in aliases.modules | set(SDK_MODULES)


class _Evaluator:
    def __init__(self, aliases: _Aliases, argument: str):
        self.aliases = aliases
        self.argument = argument

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return [self.value(item) for item in node.elts]
        if isinstance(node, ast.Dict):
            if any(key is None for key in node.keys):
                raise self._not_literal(node)
            return {self.value(k): self.value(v) for k, v in zip(node.keys, node.values, strict=True) if k}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.value(node.operand)
            if isinstance(operand, int | float):
                return -operand
        if isinstance(node, ast.Attribute) and _refers_to(
            node.value, self.aliases.device_types, "DeviceType", self.aliases
        ):
            try:
                return DeviceType[node.attr].value
            except KeyError:
                raise ScanError(
                    f"{self.argument}: DeviceType has no member {node.attr}; use one of "
                    + ", ".join(t.name for t in DeviceType)
                ) from None
        if isinstance(node, ast.Call) and _refers_to(
            node.func, self.aliases.platforms, "MinimumPlatform", self.aliases
        ):
            if node.args:
                raise ScanError(f"{self.argument}: pass MinimumPlatform's arguments by keyword")
            kwargs = {kw.arg: self.value(kw.value) for kw in node.keywords if kw.arg}
            try:
                return MinimumPlatform(**kwargs)
            except TypeError as exc:
                raise ScanError(f"{self.argument}: {exc}") from None
        raise self._not_literal(node)

    def _not_literal(self, node: ast.expr) -> ScanError:
        return ScanError(
            f"{self.argument}: {ast.unparse(node)!r} is not a literal; write the value itself "
            "(the agent reads driver files without running them)"
        )


def _declaration(cls: ast.ClassDef, call: ast.Call, aliases: _Aliases, module: str) -> Declaration:
    where = f"class {cls.name} (line {cls.lineno})"
    if len(call.args) > 1:
        raise ScanError(f"{where}: @storage_driver takes the name as its only positional argument")
    arguments: dict[str, Any] = {}
    if call.args:
        arguments["name"] = _Evaluator(aliases, "name").value(call.args[0])
    for keyword in call.keywords:
        if keyword.arg is None:
            raise ScanError(
                f"{where}: **kwargs in @storage_driver(...) cannot be read without running the file"
            )
        arguments[keyword.arg] = _Evaluator(aliases, keyword.arg).value(keyword.value)
    if "name" not in arguments:
        raise ScanError(f"{where}: @storage_driver needs the driver's name as its first argument")
    known = {"name", "version", "supported_devices", "description", "minimum_platform", "auto_load"}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise ScanError(f"{where}: unknown @storage_driver argument(s) {', '.join(unknown)}")
    name = arguments.pop("name")
    try:
        metadata = check_declaration(name, **arguments)
    except DriverDeclarationError as exc:
        raise ScanError(f"{where}: {exc}") from None
    return Declaration(
        class_name=cls.name,
        line=cls.lineno,
        driver_name=metadata.name,
        version=metadata.version,
        supported_devices=tuple(t.value for t in metadata.supported_devices),
        description=metadata.description,
        auto_load=metadata.auto_load,
        minimum_platform=metadata.minimum_platform,
        module=module,
    )


def parse_declarations(source: bytes | str, filename: str, module: str = "") -> list[Declaration]:
    """Every `@storage_driver(...)` class at the top level of the source; ScanError when unreadable."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise ScanError(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes
        raise ScanError(f"cannot parse: {exc}") from None
    aliases = _aliases(tree)
    found: list[Declaration] = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and _refers_to(
                decorator.func, aliases.decorators, DECORATOR, aliases
            ):
                found.append(_declaration(node, decorator, aliases, module))
            elif _refers_to(decorator, aliases.decorators, DECORATOR, aliases):
                raise ScanError(
                    f"class {node.name} (line {node.lineno}): write @storage_driver('Name', ...) with "
                    "the driver's name; a bare @storage_driver declares nothing"
                )
    return found


def single_declaration(declarations: list[Declaration]) -> Declaration:
    if not declarations:
        raise ScanError("no class decorated with @storage_driver(...) at module level")
    if len(declarations) > 1:
        names = ", ".join(f"{d.class_name} (line {d.line})" for d in declarations)
        raise ScanError(f"declares {len(declarations)} drivers ({names}); a driver file must declare one")
    return declarations[0]


# --- files and directories -------------------------------------------------------------------


def _read(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ScanError(f"{size} bytes; a driver file may have at most {MAX_FILE_BYTES}")
    return path.read_bytes()


__all__ = ["MAX_FILE_BYTES", "package_files", "package_sha256"]


def scan_file(path: Path, relative: str) -> ScannedDriver:
    try:
        data = _read(path)
    except ScanError as exc:
        return ScannedDriver(relative, _sha256_or_empty(path), error=str(exc))
    except OSError as exc:
        return ScannedDriver(relative, "", error=f"cannot read: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    try:
        declaration = single_declaration(parse_declarations(data, str(path)))
    except ScanError as exc:
        return ScannedDriver(relative, sha, error=str(exc))
    return ScannedDriver(relative, sha, declaration)


def scan_package(path: Path, relative: str) -> ScannedDriver:
    try:
        sha = package_sha256(path)
        irregular = package_irregular(path)
    except (OSError, ScanError) as exc:
        return ScannedDriver(relative, "", error=f"cannot read package: {exc}")
    if irregular:
        return ScannedDriver(relative, sha, error=irregular_refused(irregular))
    declarations: list[Declaration] = []
    try:
        for file in package_files(path):
            if file.suffix != ".py":
                continue
            inner = file.relative_to(path).with_suffix("")
            parts = [p for p in inner.parts if p != "__init__"]
            try:
                declarations += parse_declarations(_read(file), str(file), ".".join(parts))
            except ScanError as exc:
                raise ScanError(f"{file.relative_to(path).as_posix()}: {exc}") from None
        declaration = single_declaration(declarations)
    except ScanError as exc:
        return ScannedDriver(relative, sha, error=str(exc))
    except OSError as exc:
        return ScannedDriver(relative, sha, error=f"cannot read package: {exc}")
    return ScannedDriver(relative, sha, declaration)


def _sha256_or_empty(path: Path) -> str:
    try:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return ""


def is_package(path: Path) -> bool:
    return path.is_dir() and (path / "__init__.py").is_file()


def scan_path(path: Path, relative: str | None = None) -> ScannedDriver:
    """Scan one driver: a .py file or a package directory."""
    name = relative or path.name
    if is_package(path):
        return scan_package(path, name)
    if path.is_dir():
        return ScannedDriver(name, "", error="a directory without __init__.py is not a driver package")
    return scan_file(path, name)


@dataclass(frozen=True)
class Entry:
    """A candidate driver in a directory, with a key that changes whenever its content may have."""

    relative: str
    path: Path
    key: tuple[int, ...]


def _stat_key(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def entry_at(root: Path, relative: str) -> Entry | None:
    """The candidate driver at root/relative (a .py file or a package), or None if it is not one."""
    path = root / relative
    parts = Path(relative).parts
    if not parts or any(p.startswith(".") or p in ("__pycache__", "..") for p in parts):
        return None
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return None
        if is_package(path):
            return Entry(relative, path, tuple(v for f in package_files(path) for v in _stat_key(f)))
        if path.suffix == ".py" and path.is_file():
            return Entry(relative, path, _stat_key(path))
    except OSError:
        return None  # removed while we looked
    return None


def entries(root: Path) -> Iterator[Entry]:
    """Candidate drivers under root: .py files and package directories, in sorted order.

    Hidden names (temporary downloads start with '.'), __pycache__ and symlinks that leave root
    are skipped; plain directories are searched up to MAX_DEPTH levels.
    """

    def walk(directory: Path, depth: int) -> Iterator[Entry]:
        try:
            children = sorted(directory.iterdir())
        except OSError:
            return
        for child in children:
            relative = child.relative_to(root).as_posix()
            entry = entry_at(root, relative)
            if entry is not None:
                yield entry
            elif (
                depth < MAX_DEPTH
                and not child.name.startswith(".")
                and child.is_dir()
                and not child.is_symlink()
            ):
                yield from walk(child, depth + 1)

    yield from walk(root, 1)


def scan_directory(root: Path) -> list[ScannedDriver]:
    """Scan every candidate driver under root; broken ones are reported, never fatal."""
    return [scan_path(entry.path, entry.relative) for entry in entries(root)]
