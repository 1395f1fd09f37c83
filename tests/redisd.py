"""Real redis-server processes for tests: free loopback ports, a private dir, no persistence.

    with RedisServer(tmp_path, password="pw") as server:   # started on enter
        server.client().set("k", "v")

Every server runs with ``--daemonize no``, logs to ``<workdir>/redis.log`` and dies with the
test process (SIGKILL on close, at interpreter exit, and through PR_SET_PDEATHSIG when pytest
itself is killed).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis", reason="redis-py not installed")
import redis.cluster  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
_PORT_RETRIES = 5
_BUS_OFFSET = 10000  # cluster bus port = port + 10000
# Short enough that redis-cli --cluster create converges in ~2 s (at 5000 ms gossip made it
# take 2-11 s); a node paused longer than this is flagged FAIL and the cluster goes to
# cluster_state:fail until it answers again (then ~2x this to clear).
CLUSTER_NODE_TIMEOUT_MS = 1000


def redis_server_binary() -> str:
    """Path of redis-server, or skip the calling test when it is not installed."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server not installed: scripts/test.sh installs it with apt")
    return path


def no_retry() -> Retry:
    """A redis-py retry policy that fails at once (the default retries 3 times with backoff,
    so a 0.2 s socket_timeout against a paused server takes ~6 s to raise)."""
    return Retry(NoBackoff(), 0)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A loopback port free right now (and port+10000 too for a cluster node); racy by nature."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if not cluster or (port + _BUS_OFFSET <= 65535 and _port_free(port + _BUS_OFFSET)):
            return port
    raise RuntimeError("no free loopback port found")


def _run(*argv: str | Path, cwd: Path | None = None, timeout: float = 30.0) -> None:
    """Run a helper CLI; raise with its output when it fails."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


def make_tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server cert for 127.0.0.1/localhost; returns (ca, cert, key)."""
    ca, ca_key = workdir / "ca.crt", workdir / "ca.key"
    cert, key, csr = workdir / "server.crt", workdir / "server.key", workdir / "server.csr"
    ext = workdir / "server.ext"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=kvtier test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _run("openssl", "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={HOST}")
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n"
                   f"subjectAltName=IP:{HOST},DNS:localhost\n")
    _run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the server when the thread that started it dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL (also works on a stopped process) and wait; safe to call twice."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of a file ("" when it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RedisServer:
    """One redis-server process in ``workdir`` (created if missing), on a loopback port.

    ``password`` sets the default user's password; ``users`` adds ACL users with full access
    (and disables the default user unless ``password`` is also given). ``port=None`` picks a
    free port (retrying on a bind race); ``restart()`` always reuses the current one.
    """

    def __init__(self, workdir: Path, *, password: str | None = None,
                 users: dict[str, str] | None = None, tls: bool = False,
                 cluster: bool = False, port: int | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir)
        self.password = password
        self.users = dict(users or {})
        self.tls = tls
        self.cluster = cluster
        self.extra_args = tuple(extra_args)
        self.host = HOST
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(cluster=cluster)
        self.ca_cert: Path | None = None
        self._cert_key: tuple[Path, Path] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self.paused = False

    # -- facts ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://`` or ``rediss://`` host:port, without credentials."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("redis-server not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def credentials(self) -> dict[str, str]:
        """username/password keyword arguments for redis-py (empty without auth)."""
        if self.password is not None:
            return {"password": self.password}
        if self.users:
            name, secret = next(iter(self.users.items()))
            return {"username": name, "password": secret}
        return {}

    def connection_kwargs(self) -> dict[str, Any]:
        """host/port, credentials and TLS settings for a redis-py client of this server."""
        kw: dict[str, Any] = {"host": self.host, "port": self.port, **self.credentials()}
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=str(self.ca_cert))
        return kw

    def client(self, **kw: Any) -> redis.Redis:
        """A new authenticated redis-py client that does not retry (``retry=no_retry()``);
        ``kw`` overrides or extends those defaults."""
        return redis.Redis(**{**self.connection_kwargs(), "retry": no_retry(), **kw})

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Launch and wait (up to ~10 s) until this very process answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls and self._cert_key is None:
            self.ca_cert, cert, key = make_tls_files(self.workdir)
            self._cert_key = (cert, key)
        for attempt in range(_PORT_RETRIES):
            self._launch()
            try:
                self._wait_ready()
                return
            except _PortInUse:
                if self._fixed_port or attempt == _PORT_RETRIES - 1:
                    raise RuntimeError(self._failure(f"port {self.port} already in use")) from None
                self.port = free_port(cluster=self.cluster)

    def restart(self) -> None:
        """Start again on the same port (kills first if still running)."""
        self.kill()
        self._fixed_port = True
        self.start()

    def kill(self) -> None:
        """SIGKILL and reap; no-op when not running."""
        if self._finalizer is not None:
            self._finalizer()  # runs _reap once
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def close(self) -> None:
        """Kill if running; idempotent."""
        self.kill()

    def __enter__(self) -> RedisServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.url}, {state}, dir={self.workdir})"

    # -- internals --------------------------------------------------------------------------
    def _argv(self) -> list[str]:
        argv = [redis_server_binary(), "--bind", self.host, "--daemonize", "no",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--logfile", str(self.log_path)]
        if self.tls:
            assert self.ca_cert is not None and self._cert_key is not None
            argv += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self._cert_key[0]),
                     "--tls-key-file", str(self._cert_key[1]),
                     "--tls-ca-cert-file", str(self.ca_cert), "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(self.port)]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)]
            if self.tls:
                argv += ["--tls-cluster", "yes"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        elif self.users:
            argv += ["--user", "default", "off"]
        for name, secret in self.users.items():
            argv += ["--user", name, "on", f">{secret}", "~*", "&*", "+@all"]
        return argv + list(self.extra_args)

    def _launch(self) -> None:
        with open(self.workdir / "redis.stdout", "ab") as out:
            preexec = _die_with_parent if sys.platform.startswith("linux") else None
            self._proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, preexec_fn=preexec)
        self._finalizer = weakref.finalize(self, _reap, self._proc)

    def _wait_ready(self) -> None:
        """Poll until PING works and INFO names our pid (not some other server on the port)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = self.client(socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    self.kill()
                    if "Address already in use" in self._output():
                        raise _PortInUse
                    raise RuntimeError(self._failure("redis-server exited"))
                try:
                    if probe.ping() and int(probe.info("server")["process_id"]) == self.pid:
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                    pass
                time.sleep(0.02)
        finally:
            probe.close()
        self.kill()
        raise RuntimeError(self._failure(f"no PING answer within {START_TIMEOUT_S:.0f} s"))

    def _output(self) -> str:
        tails = (_tail(self.log_path), _tail(self.workdir / "redis.stdout"))
        return "\n".join(t for t in tails if t) or "(no output)"

    def _failure(self, what: str) -> str:
        return f"{what} ({self.url}, dir {self.workdir}); output tail:\n{self._output()}"


class _PortInUse(Exception):
    """The picked port was taken between choosing it and redis binding it."""


def _cluster_state(node: RedisServer) -> str:
    """cluster_state from the node's CLUSTER INFO ("" when it cannot be read)."""
    try:
        with node.client(socket_timeout=1.0, decode_responses=True) as probe:
            info = probe.execute_command("CLUSTER", "INFO")
    except (redis.ConnectionError, redis.TimeoutError):
        return ""
    if isinstance(info, dict):  # a client version that already parses the reply
        return str(info.get("cluster_state", ""))
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return fields.get("cluster_state", "").strip()


class RedisCluster3:
    """Three cluster masters (no replicas) in ``workdir/node-{0,1,2}``; started on enter."""

    def __init__(self, workdir: Path, *, node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS) -> None:
        self.workdir = Path(workdir)
        timeout = ("--cluster-node-timeout", str(node_timeout_ms))
        self.nodes = [RedisServer(self.workdir / f"node-{i}", cluster=True, extra_args=timeout)
                      for i in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        """Start the nodes, assign all slots with redis-cli, wait for cluster_state:ok."""
        try:
            for node in self.nodes:
                node.start()
            addrs = [f"{n.host}:{n.port}" for n in self.nodes]
            _run("redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0",
                 "--cluster-yes", cwd=self.workdir, timeout=60)
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    def wait_ok(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every node reports cluster_state:ok."""
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        while pending:
            if _cluster_state(pending[0]) == "ok":
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok after {timeout:.0f} s: {pending[0]!r}")
            time.sleep(0.05)

    def client(self, **kw: Any) -> redis.cluster.RedisCluster:
        """A new redis-py cluster client seeded with the first node."""
        first = self.nodes[0]
        return redis.cluster.RedisCluster(host=first.host, port=first.port, **kw)

    def close(self) -> None:
        """Kill every node; idempotent."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster3:
        if not any(n.running for n in self.nodes):
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def tls_supported() -> bool:
    """Whether a TLS redis-server actually starts and answers here (probed once, ~0.2 s)."""
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="redisd-tls-") as tmp:
        try:
            with RedisServer(Path(tmp), tls=True):
                return True
        except (RuntimeError, OSError, subprocess.SubprocessError):
            return False
