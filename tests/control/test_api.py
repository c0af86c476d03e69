from __future__ import annotations

import pytest
from pydantic import ValidationError

from lksup.control.api import (
    AgentStatus,
    ApplyRequest,
    StatusList,
    document,
    parse_body,
    resolve,
)
from lksup.control.errors import ControlError, MethodNotAllowed


def test_resolve_path_parameters_are_percent_decoded() -> None:
    match = resolve("POST", "/v1/agents/a%2Fb/drain")
    assert match.route.template == "/v1/agents/{name}/drain"
    assert match.params == {"name": "a/b"}


def test_resolve_query() -> None:
    match = resolve("GET", "/v1/status?agent=alpha")
    assert match.query == {"agent": "alpha"}


def test_resolve_unknown_query_parameter_is_400() -> None:
    with pytest.raises(ControlError) as info:
        resolve("GET", "/v1/status?agnet=alpha")
    assert (info.value.code, info.value.status) == ("bad_request", 400)


def test_resolve_unknown_path_is_404() -> None:
    with pytest.raises(ControlError) as info:
        resolve("GET", "/v1/nope")
    assert (info.value.code, info.value.status) == ("not_found", 404)


def test_resolve_wrong_method_is_405_with_allowed_methods() -> None:
    with pytest.raises(MethodNotAllowed) as info:
        resolve("DELETE", "/v1/agents/alpha/drain")
    assert info.value.status == 405
    assert info.value.allowed == ("POST",)


def test_resolve_empty_path_parameter_is_404() -> None:
    with pytest.raises(ControlError, match="no such endpoint"):
        resolve("POST", "/v1/agents//drain")


def test_parse_body_reports_every_validation_error() -> None:
    route = resolve("POST", "/v1/apply").route
    with pytest.raises(ControlError) as info:
        parse_body(route, b'{"dry_run": "maybe", "extra": 1}')
    assert info.value.status == 422
    assert info.value.code == "invalid"
    assert "fleet: Field required" in info.value.message
    assert "dry_run:" in info.value.message
    assert "extra: Extra inputs are not permitted" in info.value.message


def test_parse_body_rejects_non_json() -> None:
    route = resolve("POST", "/v1/apply").route
    with pytest.raises(ControlError) as info:
        parse_body(route, b"\xff{")
    assert (info.value.code, info.value.status) == ("bad_request", 400)


def test_parse_body_validates() -> None:
    route = resolve("POST", "/v1/apply").route
    body = parse_body(route, b'{"fleet": {"kind": "Fleet"}, "prune_all": true}')
    assert body == ApplyRequest(fleet={"kind": "Fleet"}, prune_all=True)


def test_documents_carry_api_version_and_kind() -> None:
    data = document("StatusList", StatusList(items=[AgentStatus(name="a", state="running")]))
    assert data["apiVersion"] == "lksup/v1"
    assert data["kind"] == "StatusList"
    assert data["items"][0]["sync"] == "synced"
    assert document("Plan", {"actions": []}) == {
        "actions": [],
        "apiVersion": "lksup/v1",
        "kind": "Plan",
    }
    assert document("Fleet", {"apiVersion": "lksup/v1", "kind": "Fleet"})["kind"] == "Fleet"


@pytest.mark.parametrize("value", ["yesterday", "2025-01-02T03:04:05"])
def test_started_at_must_be_rfc3339_with_offset(value: str) -> None:
    with pytest.raises(ValidationError):
        AgentStatus(name="a", state="running", started_at=value)


def test_status_from_a_newer_daemon_ignores_unknown_fields() -> None:
    data = {"apiVersion": "lksup/v1", "kind": "StatusList", "items": [], "future": 1}
    assert StatusList.model_validate(data).items == []
