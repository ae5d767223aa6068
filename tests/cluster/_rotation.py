"""Teleport's CA rotation state machine (lib/auth/rotate.go), pure: no I/O, no clock.

Every CA holds two key sets: ``active`` keys sign, ``additional`` keys are
trusted but do not sign. A rotation moves them through the phases

    standby -> init -> update_clients -> update_servers -> standby
                  \\________ rollback (from any of the three) ________/-> standby

``init`` puts fresh keys in ``additional``; ``update_clients`` swaps the sets
(new keys sign, old still trusted); ``update_servers`` only tells servers to
present new-CA host certificates; the final ``standby`` empties ``additional``
(the old CA stops being trusted). ``rollback`` swaps back (the keys are left
alone from ``init``) and forces manual mode; its ``standby`` discards the new
keys. A grace period of 0 is a forced rotation: the new keys become active at
once and nothing else is trusted. Automatic mode moves init -> update_clients
-> update_servers -> standby at thirds of the grace period.

Key sets are names of key files (``{"ssh": stem, "tls": stem}``); the caller
(``_ca.Authority``) makes the keys and stores the records. Error texts are
Teleport's, so that ``auth rotate`` fails as ``tctl auth rotate`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "CA_TYPES",
    "DEFAULT_GRACE_S",
    "PHASES",
    "CARecord",
    "Rotation",
    "RotationError",
    "advance",
    "expand_types",
    "rotate",
]

CAType = Literal["host", "user"]
Phase = Literal["standby", "init", "update_clients", "update_servers", "rollback"]
CA_TYPES: tuple[CAType, ...] = ("host", "user")
# types.RotatePhases, in Teleport's order (its error texts and --phase help list them so).
PHASES: tuple[str, ...] = ("init", "standby", "update_clients", "update_servers", "rollback")
# defaults.RotationGracePeriod = defaults.MaxCertDuration = 30h in the code (the guide says 48h).
DEFAULT_GRACE_S = 30 * 3600

KeySet = dict[str, str]


class RotationError(Exception):
    """A refused rotation request; the message is Teleport's."""


@dataclass(frozen=True)
class Rotation:
    """``types.Rotation``: where a CA is in its rotation (times are Unix seconds)."""

    state: Literal["standby", "in_progress"] = "standby"
    phase: str = "standby"
    mode: str = ""  # "auto" | "manual" | "" (after completion)
    current_id: str = ""
    started: float = 0.0
    grace_period_s: float = 0.0
    last_rotated: float = 0.0
    schedule: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state, "phase": self.phase, "mode": self.mode,
            "current_id": self.current_id, "started": self.started,
            "grace_period_s": self.grace_period_s, "last_rotated": self.last_rotated,
            "schedule": dict(self.schedule),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rotation:
        return cls(
            state=data.get("state", "standby"), phase=data.get("phase", "standby"),
            mode=data.get("mode", ""), current_id=data.get("current_id", ""),
            started=float(data.get("started", 0)),
            grace_period_s=float(data.get("grace_period_s", 0)),
            last_rotated=float(data.get("last_rotated", 0)),
            schedule={k: float(v) for k, v in data.get("schedule", {}).items()},
        )  # fmt: skip


@dataclass(frozen=True)
class CARecord:
    """One CA: its key sets (active first) and its rotation."""

    active: tuple[KeySet, ...]
    additional: tuple[KeySet, ...] = ()
    rotation: Rotation = field(default_factory=Rotation)

    def to_json(self) -> dict[str, Any]:
        return {
            "active": [dict(k) for k in self.active],
            "additional": [dict(k) for k in self.additional],
            "rotation": self.rotation.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CARecord:
        return cls(
            active=tuple(dict(k) for k in data["active"]),
            additional=tuple(dict(k) for k in data.get("additional", [])),
            rotation=Rotation.from_json(data.get("rotation", {})),
        )

    @property
    def trusted(self) -> tuple[KeySet, ...]:
        """``GetTrustedSSHKeyPairs``: active then additional."""
        return self.active + self.additional

    @property
    def presented(self) -> KeySet:
        """The key set servers sign their own host certificates with right now.

        Servers reload only in ``update_servers`` (and at the end): during
        ``update_clients`` the new keys sign clients' certificates while servers
        still present certificates from the old ones (now in ``additional``).
        """
        if self.rotation.phase == "update_clients" and self.additional:
            return self.additional[0]
        return self.active[0]


def expand_types(ca_type: str) -> tuple[CAType, ...]:
    """``all`` means every CA type (still accepted by Teleport, "to be deprecated")."""
    if ca_type == "all":
        return CA_TYPES
    if ca_type in CA_TYPES:
        return (ca_type,)  # type: ignore[return-value]
    raise RotationError(f"unsupported CA type: {ca_type!r}")


def _schedule(now: float, grace_s: float) -> dict[str, float]:
    """``types.GenerateSchedule``: the three transitions at thirds of the grace period."""
    return {
        "update_clients": now + grace_s / 3,
        "update_servers": now + 2 * grace_s / 3,
        "standby": now + grace_s,
    }


def rotate(
    record: CARecord,
    phase: str,
    mode: str,
    grace_s: float,
    now: float,
    new_keys: Callable[[], tuple[str, KeySet]],
) -> CARecord:
    """Apply one ``RotateRequest`` (target ``phase``) to ``record``; RotationError if refused.

    ``new_keys`` makes a fresh key set and returns ``(rotation id, key set)``;
    it is called only when ``init`` is accepted.
    """
    rot = record.rotation
    current = rot.phase or "standby"
    if phase == "init":
        if rot.state == "in_progress" or current != "standby":
            raise RotationError("can not initiate rotation while another is in progress")
        rotation_id, keys = new_keys()
        if grace_s <= 0:  # forced: the old keys are dropped at once
            return CARecord(
                active=(keys,), additional=(),
                rotation=Rotation(current_id=rotation_id, started=now, last_rotated=now),
            )  # fmt: skip
        return CARecord(
            active=record.active,
            additional=(keys,),
            rotation=Rotation(
                state="in_progress", phase="init", mode=mode, current_id=rotation_id,
                started=now, grace_period_s=grace_s, last_rotated=rot.last_rotated,
                schedule=_schedule(now, grace_s) if mode == "auto" else {},
            ),
        )  # fmt: skip
    if phase == "update_clients":
        if current != "init":
            raise RotationError(
                f"can only switch to phase update_clients from init, current phase is {current}"
            )
        return CARecord(
            active=record.additional, additional=record.active,
            rotation=replace(rot, phase="update_clients"),
        )  # fmt: skip
    if phase == "update_servers":
        if current != "update_clients":
            raise RotationError(
                "can only switch to phase update_servers from update_clients, "
                f"current phase is {current}"
            )
        return replace(record, rotation=replace(rot, phase="update_servers"))
    if phase == "rollback":
        if current not in ("init", "update_clients", "update_servers"):
            raise RotationError(f'can not transition to phase "rollback" from "{current}" phase.')
        active, additional = record.active, record.additional
        if current != "init":  # the sets were swapped at update_clients: swap back
            active, additional = additional, active
        return CARecord(
            active=active, additional=additional,
            rotation=replace(rot, phase="rollback", mode="manual", schedule={}),
        )  # fmt: skip
    if phase == "standby":
        if current not in ("update_servers", "rollback"):
            raise RotationError(f'can not transition to phase "standby" from "{current}" phase.')
        return CARecord(
            active=record.active, additional=(),
            rotation=Rotation(
                current_id=rot.current_id, started=rot.started,
                grace_period_s=rot.grace_period_s, last_rotated=now,
            ),
        )  # fmt: skip
    raise RotationError(f'unsupported phase: "{phase}"')


_NEXT = {"init": "update_clients", "update_clients": "update_servers", "update_servers": "standby"}


def advance(record: CARecord, now: float) -> CARecord:
    """``autoRotate``: take every automatic transition whose time has come."""
    while (
        record.rotation.mode == "auto"
        and record.rotation.state == "in_progress"
        and (nxt := _NEXT.get(record.rotation.phase)) is not None
        and now >= record.rotation.schedule.get(nxt, float("inf"))
    ):
        record = rotate(record, nxt, "auto", record.rotation.grace_period_s, now, _no_keys)
    return record


def _no_keys() -> tuple[str, KeySet]:
    raise AssertionError("only init makes keys")
