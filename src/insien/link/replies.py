"""The byte contract between the server and the agent, as the server reads it.

Every line the agent writes is one JSON object that starts with `{"id":` and ends with
`,"seq":n}`. The server relies on both ends: it swaps the id prefix for the client's id
without re-encoding the line, and cuts the sequence number off the end. docs/protocol.md
states the contract; tests/unit/test_byte_contract.py checks the agent's lines and the
server's reading of them against the same fixtures.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from ..protocol import Message


class Reply(NamedTuple):
    """One message from the agent: parsed for routing, and the line as the agent wrote it.

    `charge` is what it costs its request's byte budget, until its consumer releases it.
    A frame from the agent is a Reply too: `message` then describes it (`id`, `type` "output"
    with its `stream`, or "data" for file content), `line` is empty and `data` holds its bytes.
    """

    message: Message
    line: bytes
    charge: int = 0
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.line) + len(self.data or b"")

    def to_client(self, client_id: Any) -> str | bytes:
        """What a WebSocket client gets: JSON text, or for a frame one binary message, the
        frame's description as a JSON line and then its raw bytes (docs/protocol.md)."""
        if self.data is None:
            return self.for_client(client_id)
        head = {**self.message, "id": client_id}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.data

    def for_client(self, client_id: Any) -> str:
        """The message as JSON text carrying the client's id, without re-encoding it.
        The agent always writes `{"id":<agent id>,` first; only that prefix is replaced.
        """
        line = self.line
        agent_id = self.message.get("id")
        if isinstance(agent_id, str):
            prefix = ID_PREFIX + json.dumps(agent_id).encode() + b","
            if line.startswith(prefix):
                return _with_id(client_id, line, len(prefix) - 1)
        elif line.startswith(ID_PREFIX):
            end = line.find(b",", len(ID_PREFIX))
            if end > 0 and line[len(ID_PREFIX) : end].isdigit():
                return _with_id(client_id, line, end)
        return json.dumps({**self.message, "id": client_id}, ensure_ascii=False)


def _with_id(client_id: Any, line: bytes, rest: int) -> str:
    """`{"id":<client id>` and the line from `rest` on, as text. A line can be 30 MB: its
    rest is not sliced out first, so the text is the only new copy that stays."""
    head = json.dumps(client_id, ensure_ascii=False).encode()
    return b"".join((ID_PREFIX, head, memoryview(line)[rest:])).decode()


ID_PREFIX = b'{"id":'
SEQ_FIELD = b',"seq":'


def split_seq(line: bytes, message: Message) -> tuple[bytes, int | None]:
    """Take the agent's sequence number off a message: the agent appends it last."""
    seq = message.pop("seq", None)
    if not isinstance(seq, int):
        return line, None
    cut = line.rfind(SEQ_FIELD)
    return (line[:cut] + b"}" if cut > 0 else line), seq


EXCERPT_BYTES = 120


def excerpt(data: bytes) -> str:
    """A short, printable piece of hostile bytes for a log line or an end detail."""
    shown = data[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    more = f"… ({len(data)} bytes)" if len(data) > EXCERPT_BYTES else ""
    return repr(shown) + more


def encode(message: Message) -> bytes:
    """One message as one line for the agent."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
