"""What a sandbox's sealed notes carry across a server restart (labels are fixed at create).
Async tests only because a Sandbox needs a trio clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from insien.link import AgentLink
from insien.sandboxes.records import apply_notes, claim_notes
from insien.sandboxes.sandbox import Sandbox, SandboxOptions
from insien.tenancy.resources import Resources


def _sandbox(**options: object) -> Sandbox:
    now = datetime.now(UTC)
    return Sandbox(
        id="s1",
        owner="t",
        container_id="c1",
        created_at=now,
        options=SandboxOptions(
            template="img",
            timeout=60,
            idle_timeout=None,
            resources=Resources(1, 1 << 30, 64),
            **options,  # type: ignore[arg-type]
        ),
        link=AgentLink.gone(name="s1", reason="test"),
        expires_at=now + timedelta(seconds=60),
    )


async def test_a_claimed_sandboxs_options_survive_in_its_notes() -> None:
    claimed = _sandbox(on_expiry="pause", metadata={"k": "v"})
    recovered = _sandbox()
    apply_notes(recovered, claim_notes(claimed))
    assert recovered.options.on_expiry == "pause"
    assert recovered.options.metadata == {"k": "v"}


async def test_notes_with_values_no_server_writes_change_nothing() -> None:
    recovered = _sandbox()
    apply_notes(recovered, {"onExpiry": "explode", "timeout": "soon", "metadata": []})
    assert recovered.options == _sandbox().options
