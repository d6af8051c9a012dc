"""Programs that tests and benchmarks run inside sandboxes (standard library only, since the
default image has nothing else): a WebSocket echo server and a bulk HTTP server."""

from __future__ import annotations

_WEBSOCKETS = r"""
import base64, hashlib, socket, struct, sys, threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def read_head(conn):
    # The request line's path and the headers, or None if the client left first.
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        head += chunk
    lines = head.decode().split("\r\n")
    pairs = (line.partition(":") for line in lines[1:] if line)
    return lines[0].split(" ")[1], {k.lower(): v.strip() for k, _, v in pairs}

def frame(opcode, payload):
    header = bytes([0x80 | opcode])
    if len(payload) < 126:
        header += bytes([len(payload)])
    elif len(payload) < 65536:
        header += bytes([126]) + struct.pack(">H", len(payload))
    else:
        header += bytes([127]) + struct.pack(">Q", len(payload))
    return header + payload

def upgrade(conn, headers, greeting=b""):
    # The 101 and, if given, a first text message in the same write (servers that greet).
    digest = hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()
    extra = ""
    if "sec-websocket-protocol" in headers:
        chosen = headers["sec-websocket-protocol"].split(",")[0].strip()
        extra = "Sec-WebSocket-Protocol: " + chosen + "\r\n"
    conn.sendall((
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " + base64.b64encode(digest).decode() + "\r\n" + extra + "\r\n"
    ).encode() + (frame(1, greeting) if greeting else b""))

def messages(conn):
    # (opcode, payload) of each text or binary frame, until the client closes or leaves.
    while True:
        try:
            b1, b2 = read_exact(conn, 2)
        except EOFError:
            return
        opcode, length = b1 & 0x0F, b2 & 0x7F
        if length == 126:
            length = struct.unpack(">H", read_exact(conn, 2))[0]
        elif length == 127:
            length = struct.unpack(">Q", read_exact(conn, 8))[0]
        mask = read_exact(conn, 4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(conn, length)))
        if opcode == 8:
            conn.sendall(b"\x88\x02" + payload[:2])
            return
        if opcode in (1, 2):
            yield opcode, payload

def send(conn, opcode, payload):
    conn.sendall(frame(opcode, payload))
"""
"""What both WebSocket servers below share: the handshake and RFC 6455 framing, by hand."""

_LISTEN = r"""
def serve(conn):
    with conn:
        found = read_head(conn)
        if found is not None:
            answer(conn, *found)  # each server's own

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(64)
while True:
    connection, _ = listener.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""

WS_ECHO = (
    _WEBSOCKETS
    + r"""
def answer(conn, path, headers):
    upgrade(conn, headers, b"welcome" if "greet" in path else b"")
    for opcode, payload in messages(conn):
        send(conn, opcode, path.encode() if payload == b"path?" else payload)
"""
    + _LISTEN
)
"""A WebSocket echo server on port argv[1]: every message back as sent (`path?` answers the
request's path), the first offered subprotocol chosen; on a path with `greet` in it, it says
`welcome` first, in the same write as its 101."""

BULK = """
import hashlib, http.server, sys

class Bulk(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive clients would wait out delayed ACKs (40 ms)
    wbufsize = 1 << 16  # headers and a small body leave in one write

    def do_POST(self):
        left, digest = int(self.headers["Content-Length"]), hashlib.sha256()
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            digest.update(chunk)
            left -= len(chunk)
        body = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        size = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = bytes(range(256)) * 4096
        for start in range(0, size, len(block)):
            self.wfile.write(block[: min(len(block), size - start)])

http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Bulk).serve_forever()
"""

PREVIEW_APP = (
    _WEBSOCKETS
    + r"""
PAGES = {
    "/": ("text/html", open("index.html", "rb").read()),
    "/next.txt": ("text/plain", b"followed with the cookie"),
}

def answer(conn, path, headers):
    path = path.split("?")[0]
    if "sec-websocket-key" not in headers:  # a page, then close
        kind, body = PAGES.get(path, ("text/plain", b"not found"))
        status = "200 OK" if path in PAGES else "404 Not Found"
        conn.sendall((
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body)
        return
    upgrade(conn, headers)
    for _, payload in messages(conn):
        send(conn, 1, b"echo: " + payload)
"""
    + _LISTEN
)
"""A page and a WebSocket on one port (a dev server with live reload, in miniature): `/` is
index.html from the working folder, `/next.txt` a file it fetches, anything with an upgrade
a WebSocket answering "echo: <message>"."""

PREVIEW_PAGE = """<!doctype html>
<title>preview</title>
<script>
(async () => {
  const result = {};
  try {
    result.fetched = await (await fetch('next.txt')).text();
    const socket = new WebSocket(new URL('ws', location.href).href.replace(/^http/, 'ws'));
    result.echo = await new Promise((resolve, reject) => {
      socket.onopen = () => socket.send('from the page');
      socket.onmessage = (event) => resolve(event.data);
      socket.onerror = () => reject(new Error('the WebSocket failed'));
    });
    socket.close();
  } catch (error) {
    result.error = String(error);
  }
  window.result = result;
})();
</script>
"""
