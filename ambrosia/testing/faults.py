"""Fault injection for tests: the injector and the ``AMBROSIA_FAULTS`` knob.

Both live in the product module ``ambrosia.backends.faults`` (``ambrosia.host`` wraps a
store in them when the knob is set, and product code never imports ``ambrosia.testing``);
this module offers them where the rest of the testing kit is. See that module's
docstring for the knob's syntax and the report it writes.
"""

from __future__ import annotations

from ambrosia.backends.faults import (
    ALL_OPERATIONS,
    FAULTS_ENVIRONMENT_VARIABLE,
    REPORT_DIRECTORY_ENVIRONMENT_VARIABLE,
    WRITE_OPERATIONS,
    CallObservations,
    FaultCounts,
    FaultInjectingStore,
    FaultRates,
    FaultReporter,
    FaultSpec,
    ObservedStore,
    install_faults,
    parse_fault_spec,
    read_fault_reports,
)

__all__ = [
    "ALL_OPERATIONS",
    "FAULTS_ENVIRONMENT_VARIABLE",
    "REPORT_DIRECTORY_ENVIRONMENT_VARIABLE",
    "WRITE_OPERATIONS",
    "CallObservations",
    "FaultCounts",
    "FaultInjectingStore",
    "FaultRates",
    "FaultReporter",
    "FaultSpec",
    "ObservedStore",
    "install_faults",
    "parse_fault_spec",
    "read_fault_reports",
]
