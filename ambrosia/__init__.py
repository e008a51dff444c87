"""ambrosia: virtual resiliency for Python.

Write immortals as plain classes; every call between them is logged durably before it
runs, replayed after any crash, and delivered exactly once, in order.
"""

from ambrosia.binding.dispatcher import PendingCall
from ambrosia.binding.immortal import Immortal, Proxy, impulse, rpc
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import AmbrosiaError, ImpulseDuringRecoveryError, RemoteCallError
from ambrosia.host import serve

__all__ = [
    "AmbrosiaError",
    "Config",
    "Immortal",
    "ImpulseDuringRecoveryError",
    "PendingCall",
    "Proxy",
    "RemoteCallError",
    "Runtime",
    "impulse",
    "rpc",
    "serve",
]
