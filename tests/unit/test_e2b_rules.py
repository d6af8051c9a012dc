"""E2B's `network.rules` as Insien's secret bindings (src/insien/api/e2b/rules.py): the shape
the stock SDKs send, what has no binding form refused by name, and the way back."""

from __future__ import annotations

import pytest

from insien.api.e2b.rules import RulesError, bindings_for, canonical_name, rules_of
from insien.egress import NetworkPolicy

OWNED = {"OPENAI_API_KEY": "OPENAI_API_KEY", "GITHUB": "github"}


def resolve(ref: str) -> str | None:
    """The tenant's store in small: names case-insensitive, `-` as `_`."""
    return OWNED.get(canonical_name(ref).upper())


def header(host: str, name: str, value: str) -> dict[str, object]:
    return {host: [{"transform": {"headers": {name: value}}}]}


def test_a_header_naming_a_secret_is_a_binding_for_that_host() -> None:
    rules = {
        "API.example.com": [
            {"transform": {"headers": {"Authorization": "Bearer ${e2b.secrets.openai-api-key}"}}},
            {"transform": {"headers": {"X-Gh": "${e2b.secrets.github}"}}},
        ],
        "*.github.test": [{"transform": {"headers": {"X-Gh": "token ${e2b.secrets.GITHUB}"}}}],
        "quiet.test": [{}],
    }
    assert bindings_for(rules, resolve) == [
        {
            "secret": "OPENAI_API_KEY",
            "hosts": ["api.example.com"],
            "header": "Authorization: Bearer {secret}",
        },
        {"secret": "github", "hosts": ["api.example.com"], "header": "X-Gh: {secret}"},
        {"secret": "github", "hosts": ["*.github.test"], "header": "X-Gh: token {secret}"},
    ]


def test_a_later_rule_replaces_an_earlier_header_of_the_same_name() -> None:
    rules = {
        "a.test": [
            {"transform": {"headers": {"X-Key": "${e2b.secrets.github}"}}},
            {"transform": {"headers": {"x-key": "v2 ${e2b.secrets.github}"}}},
        ]
    }
    assert bindings_for(rules, resolve) == [
        {"secret": "github", "hosts": ["a.test"], "header": "x-key: v2 {secret}"}
    ]


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        (header("a.test", "X", "plain"), "names no secret"),
        (header("a.test", "X", "${e2b.secrets.github}${e2b.secrets.github}"), "2 secrets"),
        (header("a.test", "X", "${e2b.secrets.nobody}"), "you have no secret 'nobody'"),
        (header("a.test", "X", "${e2b.identity.tokens.aws}"), "workload identity"),
        (header("a.test", "X", "${e2b.other}"), "unknown placeholder"),
        (header("*", "X", "${e2b.secrets.github}"), "bare '*'"),
        ({"a.test": {"transform": {}}}, "are a list"),
        ({"a.test": [{"transform": {"body": "x"}}]}, "header transforms only"),
        ({"a.test": [{"match": {}}]}, "a rule is"),
        ({"a.test": [{"transform": {"headers": {"X": 1}}}]}, "strings"),
        (
            {**header("a.b.test", "X", "${e2b.secrets.github}"), **header("*.b.test", "Y", "1")},
            "overlap",
        ),
        (
            {**header("*.b.test", "X", "${e2b.secrets.github}"), **header("*.test", "Y", "1")},
            "overlap",
        ),
        ({"A.test": [], "a.test": []}, "given twice"),
        ([], "is an object"),
    ],
)
def test_what_has_no_binding_form_is_refused_by_name(rules: object, says: str) -> None:
    with pytest.raises(RulesError, match=says):
        bindings_for(rules, resolve)


def test_hosts_that_do_not_overlap_are_fine() -> None:
    rules = {
        **header("a.test", "X", "${e2b.secrets.github}"),
        **header("*.b.test", "X", "${e2b.secrets.github}"),
        **header("b.test", "X", "${e2b.secrets.github}"),  # the apex is not under *.b.test
    }
    assert len(bindings_for(rules, resolve)) == 3


def test_bindings_answer_back_as_rules_naming_the_secret_never_a_value() -> None:
    bound = bindings_for(
        header("api.test", "Authorization", "Bearer ${e2b.secrets.github}"), resolve
    )
    scoped = {"secret": "github", "hosts": ["x.test"], "header": "X: {secret}", "paths": ["/v1"]}
    policy = NetworkPolicy.of(["*"], [], False, [*bound, scoped])
    assert rules_of(policy) == header("api.test", "Authorization", "Bearer ${e2b.secrets.github}")
