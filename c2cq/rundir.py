"""Where an instance keeps its files: C2CQ_HOME, the per-run dir, ipc addresses, shm names.

Two instances with different homes never collide: every path and shared-memory name derives
from the home directory. The run dir and the socket dir are private (0700, owned by this user):
any local user who can open an ipc socket can speak to the service behind it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from c2cq.errors import ConfigError

_IPC_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin for "ipc://"


def default_home() -> Path:
    return Path(os.environ.get("C2CQ_HOME") or Path.home() / ".c2cq").expanduser().resolve()


@dataclass(frozen=True, slots=True)
class RunDir:
    home: Path

    @classmethod
    def from_env(cls, home: str | os.PathLike | None = None) -> "RunDir":
        return cls(Path(home).expanduser().resolve() if home else default_home())

    @property
    def instance(self) -> str:
        """A short stable id of this home, used in shm and socket names."""
        return hashlib.sha1(str(self.home).encode()).hexdigest()[:12]

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def catalog_dir(self) -> Path:
        return self.home / "catalog"

    @property
    def model_roots(self) -> tuple[Path, ...]:
        """The folders the catalog reads model files from: its own, and the model store(s) in
        $C2CQ_MODEL_STORE (os.pathsep-separated; a folder every node can read, e.g. an NFS export)."""
        store = os.environ.get("C2CQ_MODEL_STORE", "")
        return (self.catalog_dir, *(Path(p).expanduser().resolve() for p in store.split(os.pathsep) if p))

    @property
    def state_file(self) -> Path:
        return self.run / "state.json"

    @property
    def pid_file(self) -> Path:
        return self.run / "supervisor.pid"

    @property
    def log_dir(self) -> Path:
        return self.run / "logs"

    @property
    def sock_dir(self) -> Path:
        d = self.run / "sock"
        if len(str(d)) + 24 > _IPC_MAX:  # a long home: put sockets in a short per-instance dir
            d = Path("/tmp") / f"c2cq-{self.instance}"
        return d

    @property
    def shm_root_file(self) -> Path:
        """Where ``c2cq up`` records the shared-memory root it runs with, for every process of the home."""
        return self.run / "shm_root"

    @property
    def shm_root(self) -> Path:
        """Under which folder model files are published: what ``c2cq up`` recorded, else $C2CQ_SHM_ROOT,
        else /dev/shm. A hugetlbfs mount puts the weights on huge pages."""
        try:
            recorded = self.shm_root_file.read_text().strip()
        except OSError:
            recorded = ""
        return Path(recorded or os.environ.get("C2CQ_SHM_ROOT") or "/dev/shm")

    @property
    def shm_dir(self) -> Path:
        return self.shm_root / f"c2cq-{self.instance}"

    def address(self, name: str) -> str:
        addr = f"ipc://{self.sock_dir / name}.ipc"
        if len(addr) > _IPC_MAX + 6:
            raise ConfigError(f"ipc address too long: {addr}")
        return addr

    @property
    def client_addr(self) -> str:
        return os.environ.get("C2CQ_CLIENT_ADDR") or self.address("client")

    @property
    def executor_addr(self) -> str:
        return self.address("exec")

    @property
    def catalog_addr(self) -> str:
        return self.address("catalog")

    def ensure(self) -> None:
        self.catalog_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.run, self.log_dir, self.sock_dir):
            private_dir(d)


def write_json(path: Path, doc, **dump) -> None:
    """Replace ``path`` with ``doc`` as JSON in one rename: a reader sees the old file or the new one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, **dump))
    os.replace(tmp, path)


def private_dir(d: Path) -> None:
    """A folder only this user can open: created 0700, narrowed to 0700 if it exists, refused if it
    is not a folder of this user's (a /tmp name can be taken by anyone first)."""
    try:
        d.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(f"{d} is not a folder owned by this user: refusing to keep sockets in it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)
