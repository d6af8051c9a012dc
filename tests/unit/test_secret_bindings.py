"""Secret bindings as the clients write them (issue 30): the SDK's wire form both ways, and
the CLI's `--secret NAME=HOST[,HOST][=HEADER]`, without a server."""

from __future__ import annotations

import click
import pytest

from insien_sandbox import NetworkPolicy, SecretBinding
from insien_sandbox._network import network_body
from insien_sandbox.cli._app import bindings


def test_a_binding_round_trips_and_equals_the_servers_answer_for_it() -> None:
    asked = SecretBinding("OPENAI", ["api.openai.com"], header="Authorization: Bearer {secret}")
    assert asked.to_wire() == {
        "secret": "OPENAI",
        "hosts": ["api.openai.com"],
        "header": "Authorization: Bearer {secret}",
    }
    answer = {
        **asked.to_wire(),
        "methods": [],
        "paths": [],
        "body": False,
        "placeholder": "insien-secret-abc",
    }
    policy = NetworkPolicy.from_wire({"allowOut": ["api.openai.com"], "secrets": [answer]})
    assert policy.secrets == [asked]
    assert policy.secrets[0].placeholder == "insien-secret-abc"
    # What the server answered goes back as a request without its placeholder (the server's
    # request schema forbids unknown fields).
    assert "placeholder" not in policy.secrets[0].to_wire()
    narrow = SecretBinding("K", ("a.test",), methods=["POST"], paths=["/v1"], body=True)
    assert narrow.to_wire() == {
        "secret": "K",
        "hosts": ["a.test"],
        "methods": ["POST"],
        "paths": ["/v1"],
        "body": True,
    }


def test_the_policy_body_carries_bindings_only_when_there_are_some() -> None:
    assert network_body(["a.test"], None, None) == {"allowOut": ["a.test"]}
    assert network_body(["a.test"], None, None, [{"secret": "K", "hosts": ["a.test"]}]) == {
        "allowOut": ["a.test"],
        "secrets": [{"secret": "K", "hosts": ["a.test"]}],
    }
    assert NetworkPolicy.from_wire({"allowOut": []}).secrets == []


def test_the_clis_secret_option() -> None:
    assert bindings(("K=a.test,b.test:8443", "T=api.test=X-Sig: a={secret}")) == [
        SecretBinding("K", ["a.test", "b.test:8443"]),
        SecretBinding("T", ["api.test"], header="X-Sig: a={secret}"),
    ]
    for bad in ("K", "=a.test", "K=", "K=,"):
        with pytest.raises(click.BadParameter):
            bindings((bad,))
