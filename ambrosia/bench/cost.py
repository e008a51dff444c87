"""The paper's cost model (section 7.4): USD per month to ingest one MB/s, by message size.

The scenario: a service ingests ``ingest_mb_per_s`` (100 in the paper; a megabyte is 10**6
bytes) continuously for a month of ``hours_per_month`` hours, in messages of one size.
Each design's monthly bill for that load is divided by the rate, giving USD per month
per MB/s, the y axis of the paper's Figure 6. Per second of the scenario::

    messages    = ingest_bytes / size
    invocations = messages / max(1, batch_bytes_max // size)   (functions run on batches)

The ingestion services are provisioned in capacity units (Event Hubs throughput units,
Kinesis shards), and each unit has two ingress limits: bytes per second and records per
second, whichever is reached first. One benchmark message is one record (one event): the
paper's scenario puts each message on the stream by itself, so no client-side aggregation
of small messages into bigger records is modelled. The record limit is what decides for
small messages: below 1,000 B a unit's 1,000 records/s carry less than its 1 MB/s, so 100
MB/s of 16 B messages (6.25M records/s) needs 6,250 units, not 100. The paper's model
counts bytes only; the record limit comes from the services' own documentation and is
named in the price sheets.

Serverless on Azure (Event Hubs + Functions + Tables)::

    throughput units = ceil(max(ingest / 1 MB/s, messages / 1,000 events/s))
    event hubs = min(messages * ceil(size / 64 KB) * $/event
                     + throughput units * $/TU-hour * hours,
                     dedicated $/month)
    functions  = invocations * $/execution + messages * 0.1 ms * 0.125 GB * $/GB-s
    tables     = invocations * 2 transactions * $/transaction + 1 GB * $/GB-month

Serverless on AWS (Kinesis + Lambda + DynamoDB)::

    shards     = ceil(max(ingest / 1 MB/s, messages / 1,000 records/s))
    kinesis    = shards * $/shard-hour * hours
                 + messages * ceil(size / 25 KB) * $/PUT payload unit
    lambda     = priced like functions
    dynamodb   = invocations * ($/read + $/write)

The dedicated Event Hubs option stays a flat monthly price, taken whenever it is cheaper
than the standard tier (the paper's rule); the model gives it no capacity limit.

On VMs (gRPC or ambrosia), from the throughput one client/server pair reached here::

    VMs      = ceil(ingest / measured MB/s) * VMs priced per pair
    grpc     = VMs * $/VM-month
    ambrosia = VMs * $/VM-month + ingest * log bytes per byte * $/month per MB/s of storage

where ambrosia's measured MB/s is first capped at the VM's storage bandwidth (96 MB/s
for the paper's F2s), because the log cannot be written faster than that on such a VM.

A deployment (``ambrosia-bench deployment-cost``) is priced by what ``infra/`` provisions.
With a ``vm`` sheet: nodes times the VM price plus the log's storage bandwidth, as above.
With a ``deployment-aws`` sheet (EKS, S3 logs, the DynamoDB catalog), per month::

    nodes    = nodes * $/node-hour * hours        cluster = $/cluster-hour * hours
    disks    = (nodes * node disk GB + (instances + standbys) * volume GB) * EBS $/GB-month
    log PUTs = PUTs/s * seconds * $/1000 PUTs    (one PutObject per log page or lease write)
    log kept = MB/s * stored days * S3 $/GB-month (live pages, and deleted ones kept as
                                                   noncurrent versions for that long)
    standbys = standbys * ((LIST/s + PUT/s) * $/1000 PUTs + GET/s * $/1000 GETs) * seconds
               + page PUTs/s * standbys / instances * $/1000 GETs * seconds
    catalog  = reads/s * seconds * $/million reads + writes/s * seconds * $/million writes

An idle hot standby on S3 tails its log with a GET of the next page object every poll
(not found while the primary is idle), reads the metadata every fifth idle poll, tries
the lease (a GET of the lock) every lease poll and writes a progress note (a PUT) every
``board_interval_s``; it lists (priced like a PUT) only when the writer moved to a new
chunk. Each page the primary writes costs its standby one GET. docs/high-availability.md
has the counted table (``ambrosia-bench standby-cost``).

Every function here is pure; prices come from the TOML price sheets in
``bench_configs/``, each naming its source and date. A sheet with a missing, unknown or
mistyped key, or a non-positive capacity limit, is refused with a ``ValueError`` naming
the file, table and key.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from ambrosia.bench.report import CostPoint, ThroughputPoint, megabyte_bytes

__all__ = [
    "AwsDeploymentCost",
    "AwsDeploymentPrices",
    "AwsDeploymentUsage",
    "AwsPrices",
    "AzurePrices",
    "DeploymentCost",
    "PriceSheet",
    "Scenario",
    "VmPrices",
    "aws_deployment_cost",
    "cost_points",
    "deployment_cost",
    "describe_aws_deployment_cost",
    "describe_deployment_cost",
    "dynamodb_usd_per_month",
    "event_hubs_throughput_units",
    "event_hubs_usd_per_month",
    "functions_usd_per_month",
    "invocations_per_second",
    "kinesis_shards",
    "kinesis_usd_per_month",
    "load_price_sheet",
    "measured_rates",
    "messages_per_second",
    "serverless_aws_usd_per_month",
    "serverless_azure_usd_per_month",
    "tables_usd_per_month",
    "vm_usd_per_month",
]

# Float division such as 100 / (100 / 3) lands a hair above 3; a whole count of machines
# or throughput units must not round that up to 4.
_CEIL_SLACK = 1e-9


def _ceil(value: float) -> int:
    return math.ceil(value - _CEIL_SLACK)


def _require_positive(where: str, **limits: float) -> None:
    # Capacity limits are divisors: zero would divide by zero, a negative count is nonsense.
    for name, value in limits.items():
        if not value > 0:
            raise ValueError(f"{where}: {name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class Scenario:
    ingest_mb_per_s: float = 100.0

    @property
    def ingest_bytes_per_s(self) -> float:
        return self.ingest_mb_per_s * megabyte_bytes


@dataclass(frozen=True, slots=True)
class EventHubsPrices:
    usd_per_million_events: float
    event_billing_unit_bytes: int
    usd_per_throughput_unit_hour: float
    throughput_unit_ingress_mb_per_s: float
    throughput_unit_events_per_s: float
    dedicated_usd_per_month: float

    def __post_init__(self) -> None:
        _require_positive(
            "event hubs",
            event_billing_unit_bytes=self.event_billing_unit_bytes,
            throughput_unit_ingress_mb_per_s=self.throughput_unit_ingress_mb_per_s,
            throughput_unit_events_per_s=self.throughput_unit_events_per_s,
        )


@dataclass(frozen=True, slots=True)
class FunctionPrices:
    """Azure Functions or AWS Lambda: per execution plus per GB-second of execution."""

    usd_per_million_executions: float
    batch_bytes_max: int
    usd_per_gb_second: float
    memory_gb: float
    seconds_per_event: float


@dataclass(frozen=True, slots=True)
class TablesPrices:
    transactions_per_invocation: int
    usd_per_10k_transactions: float
    usd_per_gb_month: float
    state_gb: float


@dataclass(frozen=True, slots=True)
class KinesisPrices:
    usd_per_shard_hour: float
    shard_ingress_mb_per_s: float
    shard_records_per_s: float
    usd_per_million_put_payload_units: float
    put_payload_unit_bytes: int

    def __post_init__(self) -> None:
        _require_positive(
            "kinesis",
            shard_ingress_mb_per_s=self.shard_ingress_mb_per_s,
            shard_records_per_s=self.shard_records_per_s,
            put_payload_unit_bytes=self.put_payload_unit_bytes,
        )


@dataclass(frozen=True, slots=True)
class DynamoDbPrices:
    usd_per_million_reads: float
    usd_per_million_writes: float
    reads_per_invocation: int
    writes_per_invocation: int


@dataclass(frozen=True, slots=True)
class AzurePrices:
    source: str
    date: str
    hours_per_month: float
    event_hubs: EventHubsPrices
    functions: FunctionPrices
    tables: TablesPrices


@dataclass(frozen=True, slots=True)
class AwsPrices:
    source: str
    date: str
    hours_per_month: float
    kinesis: KinesisPrices
    lambda_: FunctionPrices
    dynamodb: DynamoDbPrices


@dataclass(frozen=True, slots=True)
class VmPrices:
    source: str
    date: str
    vm_name: str
    vm_usd_per_month: float
    vms_per_pair: int
    storage_usd_per_month_per_100_mb_per_s: float
    log_bytes_per_ingested_byte: float
    storage_bandwidth_cap_mb_per_s: float


@dataclass(frozen=True, slots=True)
class Ec2Prices:
    usd_per_node_hour: float


@dataclass(frozen=True, slots=True)
class EksPrices:
    usd_per_cluster_hour: float


@dataclass(frozen=True, slots=True)
class EbsPrices:
    usd_per_gb_month: float


@dataclass(frozen=True, slots=True)
class S3Prices:
    usd_per_gb_month: float
    # PUT, COPY, POST and LIST requests are priced alike; GET and the rest at another rate.
    usd_per_1000_puts: float
    usd_per_1000_gets: float


@dataclass(frozen=True, slots=True)
class DynamoDbOnDemandPrices:
    usd_per_million_reads: float
    usd_per_million_writes: float


@dataclass(frozen=True, slots=True)
class AwsDeploymentPrices:
    """A ``deployment-aws`` sheet: list prices of what infra/terraform/aws provisions."""

    source: str
    date: str
    region: str
    node_name: str
    hours_per_month: float
    ec2: Ec2Prices
    eks: EksPrices
    ebs: EbsPrices
    s3: S3Prices
    dynamodb: DynamoDbOnDemandPrices


PriceSheet = AzurePrices | AwsPrices | VmPrices | AwsDeploymentPrices

# -- the formulas -------------------------------------------------------------------------


def _seconds_per_month(hours_per_month: float) -> float:
    return hours_per_month * 3600.0


def messages_per_second(size_bytes: int, scenario: Scenario) -> float:
    return scenario.ingest_bytes_per_s / size_bytes


def invocations_per_second(size_bytes: int, batch_bytes_max: int, scenario: Scenario) -> float:
    """Functions run on full batches: as many whole messages as fit, at least one."""
    messages_per_batch = max(1, batch_bytes_max // size_bytes)
    return messages_per_second(size_bytes, scenario) / messages_per_batch


def _capacity_units(
    size_bytes: int, scenario: Scenario, unit_mb_per_s: float, unit_records_per_s: float
) -> int:
    """Units enough for both limits: a unit is full at its byte rate or its record rate."""
    by_bytes = scenario.ingest_mb_per_s / unit_mb_per_s
    by_records = messages_per_second(size_bytes, scenario) / unit_records_per_s
    return _ceil(max(by_bytes, by_records))


def event_hubs_throughput_units(
    prices: EventHubsPrices, size_bytes: int, scenario: Scenario
) -> int:
    return _capacity_units(
        size_bytes,
        scenario,
        prices.throughput_unit_ingress_mb_per_s,
        prices.throughput_unit_events_per_s,
    )


def kinesis_shards(prices: KinesisPrices, size_bytes: int, scenario: Scenario) -> int:
    return _capacity_units(
        size_bytes, scenario, prices.shard_ingress_mb_per_s, prices.shard_records_per_s
    )


def event_hubs_usd_per_month(
    prices: EventHubsPrices, size_bytes: int, scenario: Scenario, hours_per_month: float
) -> float:
    events = messages_per_second(size_bytes, scenario) * _seconds_per_month(hours_per_month)
    billed_events = events * _ceil(size_bytes / prices.event_billing_unit_bytes)
    throughput_units = event_hubs_throughput_units(prices, size_bytes, scenario)
    standard = (
        billed_events / 1e6 * prices.usd_per_million_events
        + throughput_units * prices.usd_per_throughput_unit_hour * hours_per_month
    )
    return min(standard, prices.dedicated_usd_per_month)


def functions_usd_per_month(
    prices: FunctionPrices, size_bytes: int, scenario: Scenario, hours_per_month: float
) -> float:
    seconds = _seconds_per_month(hours_per_month)
    invocations = invocations_per_second(size_bytes, prices.batch_bytes_max, scenario) * seconds
    events = messages_per_second(size_bytes, scenario) * seconds
    gb_seconds = events * prices.seconds_per_event * prices.memory_gb
    return (
        invocations / 1e6 * prices.usd_per_million_executions
        + gb_seconds * prices.usd_per_gb_second
    )


def tables_usd_per_month(
    prices: TablesPrices,
    size_bytes: int,
    batch_bytes_max: int,
    scenario: Scenario,
    hours_per_month: float,
) -> float:
    invocations = invocations_per_second(
        size_bytes, batch_bytes_max, scenario
    ) * _seconds_per_month(hours_per_month)
    transactions = invocations * prices.transactions_per_invocation
    return (
        transactions / 1e4 * prices.usd_per_10k_transactions
        + prices.state_gb * prices.usd_per_gb_month
    )


def kinesis_usd_per_month(
    prices: KinesisPrices, size_bytes: int, scenario: Scenario, hours_per_month: float
) -> float:
    shards = kinesis_shards(prices, size_bytes, scenario)
    records = messages_per_second(size_bytes, scenario) * _seconds_per_month(hours_per_month)
    payload_units = records * _ceil(size_bytes / prices.put_payload_unit_bytes)
    return (
        shards * prices.usd_per_shard_hour * hours_per_month
        + payload_units / 1e6 * prices.usd_per_million_put_payload_units
    )


def dynamodb_usd_per_month(
    prices: DynamoDbPrices,
    size_bytes: int,
    batch_bytes_max: int,
    scenario: Scenario,
    hours_per_month: float,
) -> float:
    invocations = invocations_per_second(
        size_bytes, batch_bytes_max, scenario
    ) * _seconds_per_month(hours_per_month)
    return (
        invocations
        / 1e6
        * (
            prices.reads_per_invocation * prices.usd_per_million_reads
            + prices.writes_per_invocation * prices.usd_per_million_writes
        )
    )


def serverless_azure_usd_per_month(
    prices: AzurePrices, size_bytes: int, scenario: Scenario
) -> float:
    hours = prices.hours_per_month
    return (
        event_hubs_usd_per_month(prices.event_hubs, size_bytes, scenario, hours)
        + functions_usd_per_month(prices.functions, size_bytes, scenario, hours)
        + tables_usd_per_month(
            prices.tables, size_bytes, prices.functions.batch_bytes_max, scenario, hours
        )
    )


def serverless_aws_usd_per_month(prices: AwsPrices, size_bytes: int, scenario: Scenario) -> float:
    hours = prices.hours_per_month
    return (
        kinesis_usd_per_month(prices.kinesis, size_bytes, scenario, hours)
        + functions_usd_per_month(prices.lambda_, size_bytes, scenario, hours)
        + dynamodb_usd_per_month(
            prices.dynamodb, size_bytes, prices.lambda_.batch_bytes_max, scenario, hours
        )
    )


def vm_usd_per_month(
    prices: VmPrices, measured_mb_per_s: float, scenario: Scenario, *, logs_to_storage: bool
) -> float:
    """VMs enough for the scenario at the measured rate; plus log bandwidth if logging."""
    if measured_mb_per_s <= 0:
        raise ValueError(f"measured throughput must be positive, got {measured_mb_per_s} MB/s")
    rate = measured_mb_per_s
    storage = 0.0
    if logs_to_storage:
        if prices.storage_bandwidth_cap_mb_per_s > 0:
            rate = min(rate, prices.storage_bandwidth_cap_mb_per_s)
        storage = (
            scenario.ingest_mb_per_s
            * prices.log_bytes_per_ingested_byte
            * prices.storage_usd_per_month_per_100_mb_per_s
            / 100.0
        )
    vms = _ceil(scenario.ingest_mb_per_s / rate) * prices.vms_per_pair
    return vms * prices.vm_usd_per_month + storage


@dataclass(frozen=True, slots=True)
class DeploymentCost:
    """The monthly bill of a provisioned deployment, by the VM model's two terms."""

    nodes: int
    node_usd_per_month: float
    log_mb_per_s: float
    storage_usd_per_month: float

    @property
    def usd_per_month(self) -> float:
        return self.nodes * self.node_usd_per_month + self.storage_usd_per_month


def deployment_cost(prices: VmPrices, *, nodes: int, log_mb_per_s: float) -> DeploymentCost:
    """What ``infra/`` provisions, priced like ``vm_usd_per_month`` prices ambrosia on VMs.

    ``nodes`` machines of the sheet's VM (the cluster's nodes) run the coordinators;
    their logs take ``log_mb_per_s`` of storage bandwidth in all, priced as the model
    prices ambrosia's log (the sheet's storage rate and log bytes per byte). Unlike the
    benchmark's cost, the machine count is what was provisioned, not derived from a rate.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, got {nodes}")
    if log_mb_per_s < 0:
        raise ValueError(f"log rate must not be negative, got {log_mb_per_s} MB/s")
    storage = (
        log_mb_per_s
        * prices.log_bytes_per_ingested_byte
        * prices.storage_usd_per_month_per_100_mb_per_s
        / 100.0
    )
    return DeploymentCost(nodes, prices.vm_usd_per_month, log_mb_per_s, storage)


def describe_deployment_cost(sheet: Path, prices: VmPrices, cost: DeploymentCost) -> str:
    """The lines ``ambrosia-bench deployment-cost`` prints (the docs quote them)."""
    return (
        f"price sheet: {sheet.name} ({prices.vm_name}; {prices.date})\n"
        f"nodes: {cost.nodes} x {cost.node_usd_per_month:.2f} USD/month"
        f" = {cost.nodes * cost.node_usd_per_month:.2f} USD/month\n"
        f"log: {cost.log_mb_per_s:g} MB/s at"
        f" {prices.storage_usd_per_month_per_100_mb_per_s:.2f} USD/month per 100 MB/s"
        f" = {cost.storage_usd_per_month:.2f} USD/month\n"
        f"total: {cost.usd_per_month:.2f} USD/month\n"
    )


@dataclass(frozen=True, slots=True)
class AwsDeploymentUsage:
    """What runs on the provisioned AWS deployment; the defaults are infra/'s own."""

    nodes: int = 2  # the Terraform's node_count
    node_disk_gb: float = 20.0  # the Terraform's node_disk_gb
    cluster: bool = True  # create_eks: the EKS control plane is billed per hour
    instances: int = 2  # immortals (the counter: server and client)
    volume_gb: float = 10.0  # each pod's volume claim (primaries and standbys alike)
    log_mb_per_s: float = 1.0
    log_puts_per_s: float = 50.0
    stored_days: float = 7.0  # the Terraform's noncurrent_version_days
    catalog_reads_per_s: float = 1.0
    catalog_writes_per_s: float = 0.0
    # Hot standbys (infra/kubernetes's cloud overlays run one per instance) and what one
    # idle standby asks of S3 at StandbySettings.for_log's defaults for a cloud log: a
    # poll every 0.25 s (a GET of the next page object by name, not found while idle),
    # a metadata read every fifth (0.8 GET/s), a lease try every 0.25 s (a GET of the
    # lock), a progress note every second (a PUT); a LIST only when the writer moved to
    # a new chunk. `ambrosia-bench standby-cost` counts them (docs/high-availability.md).
    standbys: int = 2
    standby_lists_per_s: float = 0.0
    standby_gets_per_s: float = 8.8
    standby_puts_per_s: float = 1.0

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {self.nodes}")
        if self.instances < 0:
            raise ValueError(f"instances must not be negative, got {self.instances}")
        if self.standbys < 0:
            raise ValueError(f"standbys must not be negative, got {self.standbys}")
        for name in (
            "node_disk_gb",
            "volume_gb",
            "log_mb_per_s",
            "log_puts_per_s",
            "stored_days",
            "catalog_reads_per_s",
            "catalog_writes_per_s",
            "standby_lists_per_s",
            "standby_gets_per_s",
            "standby_puts_per_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class AwsDeploymentCost:
    """The monthly bill of an AWS deployment, term by term (USD per month)."""

    usage: AwsDeploymentUsage
    node_usd_per_month: float
    cluster_usd_per_month: float
    disk_gb: float
    disks_usd_per_month: float
    puts_per_month: float
    puts_usd_per_month: float
    stored_gb: float
    stored_usd_per_month: float
    standby_requests_per_month: float
    standbys_usd_per_month: float
    catalog_usd_per_month: float

    @property
    def usd_per_month(self) -> float:
        return (
            self.usage.nodes * self.node_usd_per_month
            + self.cluster_usd_per_month
            + self.disks_usd_per_month
            + self.puts_usd_per_month
            + self.stored_usd_per_month
            + self.standbys_usd_per_month
            + self.catalog_usd_per_month
        )


def aws_deployment_cost(
    prices: AwsDeploymentPrices, usage: AwsDeploymentUsage
) -> AwsDeploymentCost:
    """The formulas of the module docstring's ``deployment-aws`` case."""
    hours = prices.hours_per_month
    seconds = _seconds_per_month(hours)
    pods = usage.instances + usage.standbys
    disk_gb = usage.nodes * usage.node_disk_gb + pods * usage.volume_gb
    puts = usage.log_puts_per_s * seconds
    stored_gb = usage.log_mb_per_s * megabyte_bytes * 86400.0 * usage.stored_days / 1e9
    # PUT-priced (LIST, PUT) and GET-priced requests of the standbys, per second.
    standby_puts = usage.standbys * (usage.standby_lists_per_s + usage.standby_puts_per_s)
    standby_gets = usage.standbys * usage.standby_gets_per_s
    if usage.instances > 0:
        standby_gets += usage.log_puts_per_s * usage.standbys / usage.instances
    standbys_usd = (
        standby_puts * prices.s3.usd_per_1000_puts + standby_gets * prices.s3.usd_per_1000_gets
    ) * (seconds / 1000.0)
    catalog = (
        usage.catalog_reads_per_s * seconds * prices.dynamodb.usd_per_million_reads
        + usage.catalog_writes_per_s * seconds * prices.dynamodb.usd_per_million_writes
    ) / 1e6
    return AwsDeploymentCost(
        usage=usage,
        node_usd_per_month=prices.ec2.usd_per_node_hour * hours,
        cluster_usd_per_month=prices.eks.usd_per_cluster_hour * hours if usage.cluster else 0.0,
        disk_gb=disk_gb,
        disks_usd_per_month=disk_gb * prices.ebs.usd_per_gb_month,
        puts_per_month=puts,
        puts_usd_per_month=puts / 1000.0 * prices.s3.usd_per_1000_puts,
        stored_gb=stored_gb,
        stored_usd_per_month=stored_gb * prices.s3.usd_per_gb_month,
        standby_requests_per_month=(standby_puts + standby_gets) * seconds,
        standbys_usd_per_month=standbys_usd,
        catalog_usd_per_month=catalog,
    )


def describe_aws_deployment_cost(
    sheet: Path, prices: AwsDeploymentPrices, cost: AwsDeploymentCost
) -> str:
    """The lines ``ambrosia-bench deployment-cost`` prints for an AWS sheet."""
    usage = cost.usage
    return (
        f"price sheet: {sheet.name} (AWS {prices.region} list prices; {prices.date})\n"
        f"nodes: {usage.nodes} x {prices.node_name} at {cost.node_usd_per_month:.2f} USD/month"
        f" = {usage.nodes * cost.node_usd_per_month:.2f} USD/month\n"
        f"EKS control plane: {cost.cluster_usd_per_month:.2f} USD/month\n"
        f"disks: {usage.nodes} x {usage.node_disk_gb:g} GB (nodes)"
        f" + {usage.instances + usage.standbys} x"
        f" {usage.volume_gb:g} GB (pod volumes) = {cost.disk_gb:g} GB at"
        f" {prices.ebs.usd_per_gb_month:g} USD/GB-month = {cost.disks_usd_per_month:.2f}"
        " USD/month\n"
        f"log writes: {usage.log_puts_per_s:g} PUT/s = {cost.puts_per_month / 1e6:.2f} M/month at"
        f" {prices.s3.usd_per_1000_puts:g} USD per 1000 = {cost.puts_usd_per_month:.2f}"
        " USD/month\n"
        f"log kept: {usage.log_mb_per_s:g} MB/s for {usage.stored_days:g} days ="
        f" {cost.stored_gb:.1f} GB at {prices.s3.usd_per_gb_month:g} USD/GB-month ="
        f" {cost.stored_usd_per_month:.2f} USD/month\n"
        f"standbys: {usage.standbys} x ({usage.standby_lists_per_s:g} LIST +"
        f" {usage.standby_gets_per_s:g} GET + {usage.standby_puts_per_s:g} PUT)/s, and a GET"
        f" per page = {cost.standby_requests_per_month / 1e6:.2f} M requests/month ="
        f" {cost.standbys_usd_per_month:.2f} USD/month\n"
        f"catalog: {usage.catalog_reads_per_s:g} reads/s, {usage.catalog_writes_per_s:g}"
        f" writes/s = {cost.catalog_usd_per_month:.2f} USD/month\n"
        f"total: {cost.usd_per_month:.2f} USD/month\n"
    )


# -- from measurements and sheets to rows ---------------------------------------------------


def measured_rates(points: Iterable[ThroughputPoint]) -> dict[tuple[str, int], float]:
    """(system, size) -> MB/s; a system measured twice at one size keeps the last."""
    return {(point.system, point.size_bytes): point.megabytes_per_second for point in points}


_VM_DESIGNS = (("grpc-vm", "grpc", False), ("ambrosia-vm", "ambrosia", True))


def cost_points(
    sheets: Sequence[PriceSheet],
    sizes: Sequence[int],
    measured: Mapping[tuple[str, int], float],
    scenario: Scenario | None = None,
) -> list[CostPoint]:
    """Rows for every design the sheets allow; VM designs only where a rate was measured."""
    scenario = scenario or Scenario()
    points: list[CostPoint] = []

    def add(design: str, size: int, usd_per_month: float) -> None:
        points.append(CostPoint(design, size, usd_per_month / scenario.ingest_mb_per_s))

    for sheet in sheets:
        for size in sizes:
            if isinstance(sheet, AzurePrices):
                add("serverless-azure", size, serverless_azure_usd_per_month(sheet, size, scenario))
            elif isinstance(sheet, AwsPrices):
                add("serverless-aws", size, serverless_aws_usd_per_month(sheet, size, scenario))
            elif isinstance(sheet, AwsDeploymentPrices):
                break  # prices a provisioned deployment (deployment-cost), not a design
            else:
                for design, system, logs in _VM_DESIGNS:
                    rate = measured.get((system, size))
                    if rate:
                        add(
                            design,
                            size,
                            vm_usd_per_month(sheet, rate, scenario, logs_to_storage=logs),
                        )
    return points


# -- price sheets -------------------------------------------------------------------------


_Section = TypeVar("_Section")


def _section(cls: type[_Section], table: Any, where: str) -> _Section:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: missing table")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    missing, unknown = names - table.keys(), table.keys() - names
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    values: dict[str, float] = {}
    for field in fields(cls):  # type: ignore[arg-type]
        # Every price-sheet field is a number; annotations are strings under PEP 563.
        values[field.name] = _number(table[field.name], where, field.name, field.type == "int")
    try:
        return cls(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def _number(value: object, where: str, name: str, integral: bool) -> float:
    # TOML booleans are Python ints; a price of ``true`` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}")
    if integral:
        if not isinstance(value, int):
            raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
        return value
    return float(value)


def _hours_per_month(document: Mapping[str, object], path: Path) -> float:
    if "hours_per_month" not in document:
        raise ValueError(f"{path}: missing key 'hours_per_month'")
    return _number(document["hours_per_month"], str(path), "hours_per_month", integral=False)


def load_price_sheet(path: Path) -> PriceSheet:
    """Read one sheet; its ``design`` key says which: serverless-azure, serverless-aws, vm."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from error
    design = document.get("design")
    source, date = document.get("source"), document.get("date")
    if not source or not date:
        raise ValueError(f"{path}: a price sheet must name its source and date")
    if design == "serverless-azure":
        return AzurePrices(
            source=source,
            date=date,
            hours_per_month=_hours_per_month(document, path),
            event_hubs=_section(
                EventHubsPrices, document.get("event_hubs"), f"{path} [event_hubs]"
            ),
            functions=_section(FunctionPrices, document.get("functions"), f"{path} [functions]"),
            tables=_section(TablesPrices, document.get("tables"), f"{path} [tables]"),
        )
    if design == "serverless-aws":
        return AwsPrices(
            source=source,
            date=date,
            hours_per_month=_hours_per_month(document, path),
            kinesis=_section(KinesisPrices, document.get("kinesis"), f"{path} [kinesis]"),
            lambda_=_section(FunctionPrices, document.get("lambda"), f"{path} [lambda]"),
            dynamodb=_section(DynamoDbPrices, document.get("dynamodb"), f"{path} [dynamodb]"),
        )
    if design == "deployment-aws":
        region, node_name = document.get("region"), document.get("node_name")
        if not isinstance(region, str) or not isinstance(node_name, str):
            raise ValueError(f"{path}: a deployment-aws sheet names its region and node_name")
        return AwsDeploymentPrices(
            source=source,
            date=date,
            region=region,
            node_name=node_name,
            hours_per_month=_hours_per_month(document, path),
            ec2=_section(Ec2Prices, document.get("ec2"), f"{path} [ec2]"),
            eks=_section(EksPrices, document.get("eks"), f"{path} [eks]"),
            ebs=_section(EbsPrices, document.get("ebs"), f"{path} [ebs]"),
            s3=_section(S3Prices, document.get("s3"), f"{path} [s3]"),
            dynamodb=_section(
                DynamoDbOnDemandPrices, document.get("dynamodb"), f"{path} [dynamodb]"
            ),
        )
    if design == "vm":
        vm, storage = document.get("vm"), document.get("storage")
        if not isinstance(vm, dict) or not isinstance(storage, dict):
            raise ValueError(f"{path}: a vm sheet needs [vm] and [storage] tables")
        try:
            return VmPrices(
                source=source,
                date=date,
                vm_name=str(vm["name"]),
                vm_usd_per_month=float(vm["usd_per_month"]),
                vms_per_pair=int(vm["vms_per_pair"]),
                storage_usd_per_month_per_100_mb_per_s=float(
                    storage["usd_per_month_per_100_mb_per_s"]
                ),
                log_bytes_per_ingested_byte=float(storage["log_bytes_per_ingested_byte"]),
                storage_bandwidth_cap_mb_per_s=float(storage["bandwidth_cap_mb_per_s"]),
            )
        except KeyError as error:
            raise ValueError(f"{path}: missing key {error}") from error
    raise ValueError(
        f"{path}: design {design!r} is not one of serverless-azure, serverless-aws, vm, "
        "deployment-aws"
    )
