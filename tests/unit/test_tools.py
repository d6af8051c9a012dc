"""A program the suite needs skips its tests where it is missing, and fails them in CI."""

from __future__ import annotations

import pytest

from tests.tools import require_tool

ABSENT = "insien-no-such-program"


def test_a_missing_program_skips_on_a_developers_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("INSIEN_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is missing \\(apt-get it\\)"):
        require_tool(ABSENT, "apt-get it")


@pytest.mark.parametrize(("name", "value"), [("CI", "true"), ("INSIEN_REQUIRE_TOOLS", "1")])
def test_a_missing_program_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("INSIEN_REQUIRE_TOOLS", raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises(pytest.fail.Exception, match="CI requires it"):
        require_tool(ABSENT, "apt-get it")


def test_a_present_program_is_found_by_its_path() -> None:
    assert require_tool("sh", "apt-get install dash").endswith("/sh")
