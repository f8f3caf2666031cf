"""The five AARRR lifecycle stages and their two spellings: the protobuf enum
and the capitalised name the database stores."""

from __future__ import annotations

from lifecycle.common.v1 import stage_pb2

STAGES = ("Acquisition", "Activation", "Retention", "Revenue", "Referral")

_BY_ENUM = {
    stage_pb2.LIFECYCLE_STAGE_ACQUISITION: "Acquisition",
    stage_pb2.LIFECYCLE_STAGE_ACTIVATION: "Activation",
    stage_pb2.LIFECYCLE_STAGE_RETENTION: "Retention",
    stage_pb2.LIFECYCLE_STAGE_REVENUE: "Revenue",
    stage_pb2.LIFECYCLE_STAGE_REFERRAL: "Referral",
}
_BY_NAME = {name: value for value, name in _BY_ENUM.items()}


def stage_name(value: int) -> str | None:
    """The stored name of an enum value; None for UNSPECIFIED or an unknown number."""
    return _BY_ENUM.get(value)  # type: ignore[call-overload, no-any-return]


def stage_value(name: str | None) -> stage_pb2.LifecycleStage.ValueType:
    """The enum value of a stored name; UNSPECIFIED for None."""
    if name is None:
        return stage_pb2.LIFECYCLE_STAGE_UNSPECIFIED
    return _BY_NAME[name]
