"""An embedded PostgreSQL for `shoal up`, the demo and the test suite.

We drive the binaries shipped by the `pgserver` wheel ourselves instead of calling
`pgserver.get_server()`, because Shoal needs a TCP port (worker subprocesses and
the operator connect to it like to any other server) and full control over stop
and restart (the at-least-once tests restart the database under load).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import ConfigError

# pgserver warns on import when XDG_RUNTIME_DIR is unset (containers, CI); we never use that dir.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

_SYSTEM_USER = "pgserver"  # PostgreSQL refuses to run as root; pgserver's convention.


def _bin_dir() -> Path:
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "no database URL given and the embedded PostgreSQL is not installed: "
            "set SHOAL_DATABASE_URL (or --database-url), or `pip install 'shoal[embedded]'`"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port`."""

    data_dir: Path
    port: int
    fast_unsafe: bool = False  # fsync off: for tests and benchmarks only
    # Whether this object started the server: only the process that started it stops it, so a
    # second `shoal up` on the same data directory cannot pull it from under the first.
    started: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        from pgserver.utils import ensure_user_exists  # type: ignore[attr-defined]

        entry = ensure_user_exists(_SYSTEM_USER)
        assert entry is not None
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def _prepare_root_permissions(self) -> None:
        if os.geteuid() != 0:
            return
        import stat

        from pgserver.utils import (  # type: ignore[attr-defined]
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(_SYSTEM_USER)
        assert entry is not None
        bins = _bin_dir()
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bins)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bins, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bins.parent / "lib", read)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _pg(self, exe: str, *args: str, timeout: float = 60) -> None:
        cmd = [str(_bin_dir() / exe), *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, **self._run_as()  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            log = self.data_dir / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{exe} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_root_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._pg("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=utf8")

    def is_running(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def start(self) -> None:
        opts = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {self.data_dir}",
            "-c max_connections=200",
        ]
        if self.fast_unsafe:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._pg(
            "pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60",
            "-l", str(self.data_dir / "postgres.log"), "-o", " ".join(opts), "start",
        )
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data_dir), "-w", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_embedded(data_dir: Path, port: int | None = None, *, fast_unsafe: bool = False,
                   wait: float = 30.0) -> EmbeddedPostgres:
    """Initialise (once) and start a cluster; reuse it when it is already up on that port.

    The port is remembered in the data directory so that a second `shoal up` finds the same server.
    """
    data_dir = data_dir.resolve()
    port_file = data_dir.parent / (data_dir.name + ".port")
    if port is None and port_file.exists():
        port = int(port_file.read_text().strip())
    pg = EmbeddedPostgres(data_dir=data_dir, port=port or free_port(), fast_unsafe=fast_unsafe)
    if pg.is_running():
        return pg
    pg.init()
    pg.start()
    deadline = time.monotonic() + wait
    while not pg.is_running():
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded PostgreSQL did not accept connections on port {pg.port}")
        time.sleep(0.1)
    port_file.write_text(str(pg.port))
    return pg
