"""Configuration from the environment: the seed's names and the INSIEN_ ones."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from insien.config import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in ("PORT", "API_KEY", "JWT_SECRET", "AGENT_IMAGE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"INSIEN_{name}", raising=False)
    monkeypatch.chdir(str(tmp_path))


def test_defaults() -> None:
    settings = Settings()
    assert settings.port == 3000
    assert settings.api_key is None
    assert settings.agent_image == "insien-sandbox:latest"
    assert settings.network_mode == "none"


def test_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "4000")
    monkeypatch.setenv("API_KEY", "k")
    monkeypatch.setenv("JWT_SECRET", "s")
    monkeypatch.setenv("AGENT_IMAGE", "img:1")
    settings = Settings()
    assert settings.port == 4000
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "k"
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "s"
    assert settings.agent_image == "img:1"


def test_insien_names_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "4000")
    monkeypatch.setenv("INSIEN_PORT", "5000")
    assert Settings().port == 5000


def test_dotenv_file(tmp_path: object) -> None:
    from pathlib import Path

    Path(str(tmp_path), ".env").write_text("API_KEY=from-file\nINSIEN_PIDS_LIMIT=64\n")
    settings = Settings()
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-file"
    assert settings.pids_limit == 64


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "super-secret-key")
    assert "super-secret-key" not in repr(Settings())


@pytest.mark.parametrize(("name", "value"), [("INSIEN_PORT", "99999"), ("INSIEN_INSTANCE", "a b")])
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
