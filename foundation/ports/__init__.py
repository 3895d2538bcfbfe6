"""The ports: the only interfaces agent code may depend on.

Each port is a ``typing.Protocol`` with a real adapter (``foundation.adapters``)
and a sim adapter (``sim.adapters``); one conformance suite runs against both.
This package must not know which adapter is behind a port.
"""

from foundation.ports.runtime import Cancelled, Event, Queue, Runtime, Task, TaskFailed
from foundation.ports.store import (
    CompactedError,
    Compare,
    DeleteOp,
    DeleteResult,
    GetOp,
    KeyValue,
    Lease,
    LeaseNotFound,
    PutOp,
    PutResult,
    RangeResult,
    Store,
    StoreError,
    StoreUnavailable,
    TxnResult,
    Watch,
    WatchEvent,
)

__all__ = [
    "Cancelled",
    "CompactedError",
    "Compare",
    "DeleteOp",
    "DeleteResult",
    "Event",
    "GetOp",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "PutOp",
    "PutResult",
    "Queue",
    "RangeResult",
    "Runtime",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Task",
    "TaskFailed",
    "TxnResult",
    "Watch",
    "WatchEvent",
]
