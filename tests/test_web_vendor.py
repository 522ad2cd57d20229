"""The vendored front-end libraries match their manifest and the pinned versions."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "web"
VENDOR = WEB / "vendor"


def manifest() -> list[tuple[str, str, str, int, str]]:
    """(package, version, path, bytes, sha256) per vendored file."""
    rows = []
    for line in (VENDOR / "MANIFEST.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        spec, path, size, digest = line.split()
        package, _, version = spec.rpartition("@")
        rows.append((package, version, path, int(size), digest))
    return rows


def test_every_vendored_file_matches_the_manifest() -> None:
    rows = manifest()
    listed = {path for _, _, path, _, _ in rows}
    on_disk = {str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*") if p.is_file()} - {
        "MANIFEST.txt"
    }
    assert listed == on_disk
    for _, _, path, size, digest in rows:
        data = (VENDOR / path).read_bytes()
        assert len(data) == size, path
        assert hashlib.sha256(data).hexdigest() == digest, path


def test_versions_are_the_pinned_ones() -> None:
    package = json.loads((WEB / "package.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    pinned = package["dependencies"]
    assert set(pinned) == {"@xterm/xterm", "@xterm/addon-fit", "uplot"}
    for name, version in pinned.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} must be pinned exactly"
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == version
        assert entry["integrity"].startswith("sha512-")
    vendored = {(p, v) for p, v, _, _, _ in manifest()}
    assert vendored == set(pinned.items())


def test_each_library_ships_its_license_and_code() -> None:
    dirs = {Path(path).parts[0] for _, _, path, _, _ in manifest()}
    assert dirs == {"xterm", "xterm-addon-fit", "uplot"}
    for d in dirs:
        # The MIT license's grant, which all three use.
        assert (
            "Permission is hereby granted, free of charge" in (VENDOR / d / "LICENSE").read_text()
        )
        assert any(p.suffix == ".js" for p in (VENDOR / d).iterdir())
    # The UMD/IIFE builds define the globals the pages use.
    assert b"Terminal" in (VENDOR / "xterm" / "xterm.js").read_bytes()
    assert b"FitAddon" in (VENDOR / "xterm-addon-fit" / "addon-fit.js").read_bytes()
    assert (VENDOR / "uplot" / "uPlot.iife.min.js").read_bytes().find(b"var uPlot=") >= 0
