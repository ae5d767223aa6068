"""The test cluster's CA rotation state machine (tests/cluster/_rotation.py), without I/O."""

from __future__ import annotations

import itertools

import pytest

from tests.cluster._rotation import CARecord, RotationError, advance, expand_types, rotate

OLD = {"ssh": "old", "tls": "old-tls"}
_ids = itertools.count(1)


def _new() -> tuple[str, dict[str, str]]:
    n = next(_ids)
    return f"id{n}", {"ssh": f"new{n}", "tls": f"new{n}-tls"}


def _go(record: CARecord, *phases: str, grace: float = 300.0, now: float = 1000.0) -> CARecord:
    for phase in phases:
        record = rotate(record, phase, "manual", grace, now, _new)
    return record


def _ssh(sets: tuple[dict[str, str], ...]) -> list[str]:
    return [k["ssh"] for k in sets]


def test_manual_rotation_moves_the_key_sets_as_teleport() -> None:
    start = CARecord(active=(OLD,))
    init = _go(start, "init")
    new = init.additional[0]["ssh"]
    assert (_ssh(init.active), _ssh(init.additional)) == (["old"], [new])
    assert init.presented["ssh"] == "old"
    assert (init.rotation.state, init.rotation.phase, init.rotation.mode) == (
        "in_progress", "init", "manual"
    )
    clients = _go(init, "update_clients")
    assert _ssh(clients.trusted) == [new, "old"]  # new signs, old still trusted
    assert clients.presented["ssh"] == "old"  # servers have not reloaded yet
    servers = _go(clients, "update_servers")
    assert _ssh(servers.trusted) == [new, "old"]
    assert servers.presented["ssh"] == new
    done = _go(servers, "standby", now=2000.0)
    assert _ssh(done.trusted) == [new]
    assert (done.rotation.state, done.rotation.phase, done.rotation.mode) == (
        "standby", "standby", ""
    )
    assert done.rotation.last_rotated == 2000.0


@pytest.mark.parametrize("from_phases", [("init",), ("init", "update_clients"),
                                         ("init", "update_clients", "update_servers")])
def test_rollback_from_each_phase_restores_the_old_keys(from_phases: tuple[str, ...]) -> None:
    rolled = _go(CARecord(active=(OLD,)), *from_phases, "rollback")
    assert _ssh(rolled.active) == ["old"]
    assert len(rolled.additional) == 1  # the new keys stay trusted until standby
    assert (rolled.rotation.phase, rolled.rotation.mode) == ("rollback", "manual")
    assert rolled.presented["ssh"] == "old"
    done = _go(rolled, "standby")
    assert _ssh(done.trusted) == ["old"]


def test_rollback_forces_manual_mode() -> None:
    auto = rotate(CARecord(active=(OLD,)), "init", "auto", 300, 1000, _new)
    assert auto.rotation.mode == "auto"
    rolled = rotate(auto, "rollback", "auto", 300, 1001, _new)
    assert rolled.rotation.mode == "manual"
    assert advance(rolled, 10**9) == rolled  # manual: time does nothing


def test_grace_zero_is_a_forced_rotation() -> None:
    forced = rotate(CARecord(active=(OLD,)), "init", "auto", 0, 1000, _new)
    assert len(forced.trusted) == 1 and forced.active[0]["ssh"] != "old"
    assert (forced.rotation.state, forced.rotation.phase) == ("standby", "standby")
    assert forced.rotation.last_rotated == 1000


def test_auto_mode_moves_at_thirds_of_the_grace_period() -> None:
    rec = rotate(CARecord(active=(OLD,)), "init", "auto", 300, 1000, _new)
    assert rec.rotation.schedule == {
        "update_clients": 1100.0, "update_servers": 1200.0, "standby": 1300.0
    }
    assert advance(rec, 1099).rotation.phase == "init"
    assert advance(rec, 1100).rotation.phase == "update_clients"
    assert advance(rec, 1250).rotation.phase == "update_servers"
    done = advance(rec, 5000)  # long after: every step taken, in order
    assert done.rotation.phase == "standby" and len(done.trusted) == 1
    assert done.active[0]["ssh"] != "old"
    assert done.rotation.last_rotated == 5000


@pytest.mark.parametrize(
    ("phases", "target", "message"),
    [
        (("init",), "init", "can not initiate rotation while another is in progress"),
        ((), "update_clients",
         "can only switch to phase update_clients from init, current phase is standby"),
        (("init",), "update_servers",
         "can only switch to phase update_servers from update_clients, current phase is init"),
        ((), "rollback", 'can not transition to phase "rollback" from "standby" phase.'),
        (("init",), "standby", 'can not transition to phase "standby" from "init" phase.'),
        (("init", "update_clients"), "standby",
         'can not transition to phase "standby" from "update_clients" phase.'),
        ((), "bogus", 'unsupported phase: "bogus"'),
    ],
)
def test_refused_transitions_say_what_teleport_says(
    phases: tuple[str, ...], target: str, message: str
) -> None:
    record = _go(CARecord(active=(OLD,)), *phases)
    with pytest.raises(RotationError) as e:
        rotate(record, target, "manual", 300, 1000, _new)
    assert str(e.value) == message


def test_all_means_every_type() -> None:
    assert expand_types("all") == ("host", "user")
    assert expand_types("user") == ("user",)
    with pytest.raises(RotationError):
        expand_types("db")


def test_records_round_trip_through_json() -> None:
    rec = rotate(CARecord(active=(OLD,)), "init", "auto", 300, 1000, _new)
    assert CARecord.from_json(rec.to_json()) == rec
