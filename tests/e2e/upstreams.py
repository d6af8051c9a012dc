"""Servers on this machine's loopback (127.0.0.2, 127.0.0.3, ...) that sandboxes reach through
the egress proxy in tests: static files, a PyPI simple index, a git smart-HTTP repository, an
npm registry, each a real protocol its real client speaks. Nothing here leaves 127.0.0.0/8."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socketserver
import ssl
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WHEEL_NAME = "insien_demo"
WHEEL_VERSION = "1.0.0"
NPM_PACKAGE = "insien-demo"


class Handler(SimpleHTTPRequestHandler):
    """Files from the server's folder, and `git http-backend` under `/git/`."""

    server: Upstream

    def log_message(self, format: str, *args: Any) -> None:
        self.server.requests.append(self.requestline)

    def do_GET(self) -> None:
        if self.path.startswith("/git/"):
            self._git()
        elif self.path == "/flood":  # without end, for clients that stop reading
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            block = b"x" * 65536
            try:
                while True:
                    self.wfile.write(block)
            except OSError:
                return
        elif self.path == f"/{NPM_PACKAGE}":  # npm's packument: JSON at the bare name
            body = (self.server.root / NPM_PACKAGE / "packument.json").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def do_POST(self) -> None:
        if self.path.startswith("/git/"):
            self._git()
        else:
            self.send_error(405)

    def _git(self) -> None:
        """Git's smart HTTP, by running `git http-backend` as the CGI program it is."""
        path, _, query = self.path[len("/git") :].partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "GIT_PROJECT_ROOT": str(self.server.root / "git"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "PATH": "/usr/bin:/bin",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding") == "gzip":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class NoNameLookup(ThreadingHTTPServer):
    """A server that does not look its address's name up when it binds (HTTPServer asks DNS
    for 127.0.0.2's: ten seconds each where no DNS answers, as in the k8s test namespace)."""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class Upstream(NoNameLookup):
    daemon_threads = True

    def __init__(self, host: str, root: Path, context: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.requests: list[str] = []

        def handler(*args: Any) -> Handler:
            return Handler(*args, directory=str(root))

        super().__init__((host, 0), handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextmanager
def upstream(host: str, root: Path, context: ssl.SSLContext | None = None) -> Iterator[Upstream]:
    server = Upstream(host, root, context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def tls_context(folder: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for `name`, and the certificate file
    (a client inside the sandbox trusts exactly that file)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
            *("-addext", f"subjectAltName=DNS:{name}"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


def _wheel() -> tuple[str, bytes]:
    """A real (tiny) wheel, as pip downloads and checks it."""
    name = f"{WHEEL_NAME}-{WHEEL_VERSION}-py3-none-any.whl"
    dist = f"{WHEEL_NAME}-{WHEEL_VERSION}.dist-info"
    files = {
        f"{WHEEL_NAME}/__init__.py": b"GREETING = 'hello from the local index'\n",
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {WHEEL_NAME}\nVersion: {WHEEL_VERSION}\n"
        ).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: insien-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return name, buffer.getvalue()


def _npm_tarball() -> bytes:
    buffer = io.BytesIO()
    manifest = {"name": NPM_PACKAGE, "version": "1.0.0", "main": "index.js"}
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, content in {
            "package/package.json": json.dumps(manifest).encode(),
            "package/index.js": b"module.exports = 'hello from the local registry';\n",
        }.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def populate(root: Path, registry_url: str) -> None:
    """index.txt, a PyPI simple index with one wheel, a git repository, an npm registry."""
    (root / "index.txt").write_text("hello from upstream\n")
    (root / "big.bin").write_bytes(hashlib.sha256(b"seed").digest() * (1 << 15))  # 1 MiB
    wheel_name, wheel = _wheel()
    project = root / "simple" / WHEEL_NAME.replace("_", "-")
    project.mkdir(parents=True)
    (project / wheel_name).write_bytes(wheel)
    digest = hashlib.sha256(wheel).hexdigest()
    (project / "index.html").write_text(
        f'<html><body><a href="{wheel_name}#sha256={digest}">{wheel_name}</a></body></html>\n'
    )
    tarball = _npm_tarball()
    package = root / NPM_PACKAGE
    (package / "-").mkdir(parents=True)
    (package / "-" / f"{NPM_PACKAGE}-1.0.0.tgz").write_bytes(tarball)
    packument = {
        "name": NPM_PACKAGE,
        "dist-tags": {"latest": "1.0.0"},
        "versions": {
            "1.0.0": {
                "name": NPM_PACKAGE,
                "version": "1.0.0",
                "main": "index.js",
                "dist": {
                    "tarball": f"{registry_url}/{NPM_PACKAGE}/-/{NPM_PACKAGE}-1.0.0.tgz",
                    "shasum": hashlib.sha1(tarball).hexdigest(),
                },
            }
        },
    }
    (package / "packument.json").write_text(json.dumps(packument))
    repo = root / "git" / "demo.git"
    work = root / "git-work"
    work.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README.md").write_text("cloned through the egress proxy\n")
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "first"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(repo)], check=True)
    shutil.rmtree(work)


NPM_FOR_NODE_18 = "npm@10.9.2"
"""The sandbox image's Node is Debian's 18; npm 11 refuses it, so tests carry npm 10 in."""


def npm_tarball(cache: Path) -> Path:
    """npm itself as a package tarball (from the npm registry, once; then from the cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("npm-10.*.tgz"))
    if not found:
        subprocess.run(
            ["npm", "pack", NPM_FOR_NODE_18, "--pack-destination", str(cache), "--silent"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        found = sorted(cache.glob("npm-10.*.tgz"))
    return found[-1]


def pip_wheel() -> Path:
    """pip as a wheel, from this Python's ensurepip (no download): `python3 pip.whl/pip`."""
    import ensurepip

    bundled = Path(ensurepip.__file__).parent / "_bundled"
    return sorted(bundled.glob("pip-*.whl"))[-1]


class _WebhookHandler(BaseHTTPRequestHandler):
    server: WebhookReceiver

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        receiver = self.server
        with receiver.lock:
            receiver.attempts += 1
            failing = receiver.attempts <= receiver.fail_first
            with suppress(ValueError):
                failing |= json.loads(body).get("sandboxId") in receiver.refused
        if receiver.hang:
            receiver.released.wait(30)  # never answers in time
            return
        if failing:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with receiver.lock:
            receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()


class WebhookReceiver(ThreadingHTTPServer):
    """Takes webhook POSTs on 127.0.0.1: answers 500 to the first `fail_first` and to events of
    the sandboxes in `refused` (while they are), or nothing at all (`hang`), and 204 to the
    rest, keeping what it was sent."""

    daemon_threads = True

    def __init__(self, fail_first: int, hang: bool) -> None:
        super().__init__(("127.0.0.1", 0), _WebhookHandler)
        self.fail_first = fail_first
        self.hang = hang
        self.attempts = 0
        self.refused: set[str] = set()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook?token=do-not-log"

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.received)


@contextmanager
def webhook_receiver(fail_first: int = 0, hang: bool = False) -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(fail_first, hang)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
