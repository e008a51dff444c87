"""Every formula of the cost model against numbers worked out by hand.

Shared arithmetic (paper scenario: 100 MB/s = 1e8 bytes/s for 730 hours):
    seconds per month          = 730 * 3600            = 2,628,000
    16 B:  messages per second = 1e8 / 16              = 6,250,000
           messages per month  = 6.25e6 * 2.628e6      = 1.6425e13
           messages per batch  = 262,144 // 16         = 16,384
           invocations/month   = 6.25e6 / 16384 * 2.628e6 = 1,002,502,441.40625
    64 KiB: messages per second = 1e8 / 65536          = 1,525.87890625
           messages per month  = 1525.87890625 * 2.628e6 = 4,010,009,765.625
           messages per batch  = 262,144 // 65,536     = 4
           invocations/month   = the same 1,002,502,441.40625 (batches are full 256 KiB)
Capacity units (shards, throughput units), 1 MB/s and 1,000 records/s each:
    16 B:   max(100 / 1, 6,250,000 / 1000 = 6,250)       = 6,250 (records decide)
    64 KiB: max(100 / 1, 1,525.87890625 / 1000 = 1.53)   = 100   (bytes decide)
    6,250 units * 0.015 $/hour * 730 hours = 68,437.5; 100 units = 1,095
"""

import re
from pathlib import Path

import pytest

from ambrosia.bench import cost
from ambrosia.bench.report import CostPoint, throughput_point

CONFIGS = Path(__file__).resolve().parents[2] / "bench_configs"
PAPER = cost.Scenario(ingest_mb_per_s=100.0)
HOURS = 730.0


@pytest.fixture(scope="module")
def azure() -> cost.AzurePrices:
    sheet = cost.load_price_sheet(CONFIGS / "prices-azure.toml")
    assert isinstance(sheet, cost.AzurePrices)
    return sheet


@pytest.fixture(scope="module")
def aws() -> cost.AwsPrices:
    sheet = cost.load_price_sheet(CONFIGS / "prices-aws.toml")
    assert isinstance(sheet, cost.AwsPrices)
    return sheet


@pytest.fixture(scope="module")
def vm() -> cost.VmPrices:
    sheet = cost.load_price_sheet(CONFIGS / "prices-vm.toml")
    assert isinstance(sheet, cost.VmPrices)
    return sheet


def test_sheets_hold_the_papers_inputs(
    azure: cost.AzurePrices, aws: cost.AwsPrices, vm: cost.VmPrices
) -> None:
    assert azure.event_hubs.usd_per_million_events == 0.028
    assert azure.event_hubs.dedicated_usd_per_month == 4999.77
    assert azure.functions.usd_per_gb_second == 0.000016
    assert azure.tables.usd_per_10k_transactions == 0.00036
    assert aws.kinesis.usd_per_million_put_payload_units == 0.014
    # Not the paper's: the services' documented record limits per unit.
    assert aws.kinesis.shard_records_per_s == 1000
    assert azure.event_hubs.throughput_unit_events_per_s == 1000
    assert aws.dynamodb.usd_per_million_reads == 1.25
    assert vm.vm_usd_per_month == 169.36
    assert vm.storage_usd_per_month_per_100_mb_per_s == 19.71
    for sheet in (azure, aws, vm):
        assert "A.M.B.R.O.S.I.A" in sheet.source and sheet.date


def test_rates() -> None:
    assert cost.messages_per_second(16, PAPER) == 6_250_000
    assert cost.invocations_per_second(16, 262_144, PAPER) == pytest.approx(381.4697265625)
    # Messages bigger than a batch: one message per invocation.
    assert cost.invocations_per_second(400_000, 262_144, PAPER) == pytest.approx(250.0)


def test_capacity_units_take_the_tighter_limit(
    azure: cost.AzurePrices, aws: cost.AwsPrices
) -> None:
    for units in (
        lambda size: cost.kinesis_shards(aws.kinesis, size, PAPER),
        lambda size: cost.event_hubs_throughput_units(azure.event_hubs, size, PAPER),
    ):
        # 1e8 / 16 = 6,250,000 records/s / 1000 = 6,250 > 100 MB/s / 1 = 100
        assert units(16) == 6_250
        # 1e8 / 65536 = 1,525.88 records/s / 1000 = 1.53 < 100
        assert units(65536) == 100
        # 1e8 / 1000 = 100,000 records/s / 1000 = 100: both limits meet, no extra unit
        assert units(1000) == 100
        # 1e8 / 999 = 100,100.1 records/s / 1000 = 100.1 -> 101
        assert units(999) == 101


def test_event_hubs_dedicated_wins_at_16_bytes(azure: cost.AzurePrices) -> None:
    # standard = 1.6425e13 / 1e6 * 0.028 = 459,900 + 6,250 TU * 0.015 * 730 = 68,437.5
    #          = 528,337.5 > 4,999.77 dedicated
    assert cost.event_hubs_usd_per_month(azure.event_hubs, 16, PAPER, HOURS) == 4999.77


def test_event_hubs_standard_at_64_kib(azure: cost.AzurePrices) -> None:
    # 100 TU (bytes decide): 4,010,009,765.625 / 1e6 * 0.028 = 112.2802734375; + 1,095
    # = 1,207.2802734375
    value = cost.event_hubs_usd_per_month(azure.event_hubs, 65536, PAPER, HOURS)
    assert value == pytest.approx(1207.2802734375)


def test_event_hubs_bills_big_events_per_64_kb(azure: cost.AzurePrices) -> None:
    # 100,000 B: 1e3 messages/s * 2.628e6 = 2.628e9, two billing units each = 5.256e9
    # 5,256 * 0.028 = 147.168; + 1,095 = 1,242.168
    value = cost.event_hubs_usd_per_month(azure.event_hubs, 100_000, PAPER, HOURS)
    assert value == pytest.approx(1242.168)


def _units_only_event_hubs() -> cost.EventHubsPrices:
    # Free events and an unaffordable dedicated option leave only the throughput units.
    return cost.EventHubsPrices(
        usd_per_million_events=0.0,
        event_billing_unit_bytes=65536,
        usd_per_throughput_unit_hour=0.015,
        throughput_unit_ingress_mb_per_s=1.0,
        throughput_unit_events_per_s=1000,
        dedicated_usd_per_month=1e9,
    )


def test_throughput_units_round_up() -> None:
    # 64 KiB at 2.5 MB/s: 2.5e6 / 65536 = 38.15 events/s, far below 1,000, so bytes decide:
    # 2.5 MB/s needs 3 units: 3 * 0.015 * 730 = 32.85
    assert cost.event_hubs_usd_per_month(
        _units_only_event_hubs(), 65536, cost.Scenario(ingest_mb_per_s=2.5), HOURS
    ) == pytest.approx(32.85)


def test_throughput_units_for_small_events_follow_the_event_limit() -> None:
    # 16 B at 2.5 MB/s: 2.5e6 / 16 = 156,250 events/s / 1000 = 156.25 -> 157 units
    # (the byte limit alone would give 3): 157 * 0.015 * 730 = 1,719.15
    assert cost.event_hubs_usd_per_month(
        _units_only_event_hubs(), 16, cost.Scenario(ingest_mb_per_s=2.5), HOURS
    ) == pytest.approx(1719.15)


def test_functions(azure: cost.AzurePrices) -> None:
    # 16 B: 1,002.50244140625 M executions * 0.20 = 200.50048828125
    #       1.6425e13 events * 1e-4 s * 0.125 GB = 205,312,500 GB-s * 0.000016 = 3,285
    value = cost.functions_usd_per_month(azure.functions, 16, PAPER, HOURS)
    assert value == pytest.approx(3485.50048828125)
    # 64 KiB: same executions 200.50048828125;
    #         4,010,009,765.625 * 1e-4 * 0.125 = 50,125.1220703125 GB-s * 0.000016
    #         = 0.802001953125
    value = cost.functions_usd_per_month(azure.functions, 65536, PAPER, HOURS)
    assert value == pytest.approx(201.302490234375)


def test_tables(azure: cost.AzurePrices) -> None:
    # 2 * 1,002,502,441.40625 = 2,005,004,882.8125 transactions / 1e4 * 0.00036
    # = 72.18017578125; + 1 GB * 0.07
    value = cost.tables_usd_per_month(azure.tables, 16, 262_144, PAPER, HOURS)
    assert value == pytest.approx(72.25017578125)


def test_serverless_azure_total_per_mb_per_s(azure: cost.AzurePrices) -> None:
    # 4,999.77 + 3,485.50048828125 + 72.25017578125 = 8,557.5206640625 per 100 MB/s
    assert cost.serverless_azure_usd_per_month(azure, 16, PAPER) == pytest.approx(8557.5206640625)


def test_kinesis(aws: cost.AwsPrices) -> None:
    # 16 B: 6,250 shards (records decide) * 0.015 * 730 = 68,437.5;
    #       1.6425e13 units / 1e6 * 0.014 = 229,950; total 298,387.5
    assert cost.kinesis_usd_per_month(aws.kinesis, 16, PAPER, HOURS) == pytest.approx(298_387.5)
    # 64 KiB: 100 shards (bytes decide) = 1,095; ceil(65536 / 25600) = 3 units per record
    # 4,010,009,765.625 * 3 / 1e6 * 0.014 = 168.42041015625; + 1,095
    assert cost.kinesis_usd_per_month(aws.kinesis, 65536, PAPER, HOURS) == pytest.approx(
        1263.42041015625
    )
    # 512 B: 1e8 / 512 = 195,312.5 records/s / 1000 = 195.3125 -> 196 shards
    #        196 * 0.015 * 730 = 2,146.2
    #        195,312.5 * 2.628e6 = 513,281,250,000 records, one unit each
    #        / 1e6 * 0.014 = 7,185.9375; total 9,332.1375
    assert cost.kinesis_usd_per_month(aws.kinesis, 512, PAPER, HOURS) == pytest.approx(9332.1375)


def test_dynamodb(aws: cost.AwsPrices) -> None:
    # 1,002.50244140625 M invocations * (1.25 + 0.25) = 1,503.753662109375
    value = cost.dynamodb_usd_per_month(aws.dynamodb, 16, 262_144, PAPER, HOURS)
    assert value == pytest.approx(1503.753662109375)


def test_serverless_aws_total(aws: cost.AwsPrices) -> None:
    # 298,387.5 + 3,485.50048828125 + 1,503.753662109375 = 303,376.754150390625
    assert cost.serverless_aws_usd_per_month(aws, 16, PAPER) == pytest.approx(303_376.754150390625)


def test_vm_grpc(vm: cost.VmPrices) -> None:
    # 0.33 MB/s per pair: ceil(100 / 0.33) = ceil(303.03) = 304 VMs * 169.36 = 51,485.44
    assert cost.vm_usd_per_month(vm, 0.33, PAPER, logs_to_storage=False) == pytest.approx(51_485.44)
    # Exactly 100/3 MB/s needs 3 VMs, not 4 (float division must not round up).
    assert cost.vm_usd_per_month(vm, 100 / 3, PAPER, logs_to_storage=False) == pytest.approx(
        3 * 169.36
    )


def test_vm_ambrosia_adds_storage_and_is_capped(vm: cost.VmPrices) -> None:
    # 5 MB/s: 20 VMs * 169.36 = 3,387.2; + 100 MB/s of log bandwidth = 19.71
    assert cost.vm_usd_per_month(vm, 5.0, PAPER, logs_to_storage=True) == pytest.approx(3406.91)
    # 700 MB/s measured, capped at 96: ceil(100 / 96) = 2 VMs = 338.72; + 19.71
    assert cost.vm_usd_per_month(vm, 700.0, PAPER, logs_to_storage=True) == pytest.approx(358.43)
    with pytest.raises(ValueError, match="positive"):
        cost.vm_usd_per_month(vm, 0.0, PAPER, logs_to_storage=True)


def test_cost_points_per_mb_per_s(
    azure: cost.AzurePrices, aws: cost.AwsPrices, vm: cost.VmPrices
) -> None:
    measured = cost.measured_rates(
        [
            throughput_point("grpc", 16, 20_625, 1.0),  # 0.33 MB/s
            throughput_point("ambrosia", 16, 312_500, 1.0),  # 5 MB/s
        ]
    )
    points = cost.cost_points([azure, aws, vm], [16, 1024], measured, PAPER)
    by_key = {(p.design, p.size_bytes): p for p in points}
    assert by_key[("serverless-azure", 16)] == CostPoint(
        "serverless-azure",
        16,
        pytest.approx(85.575206640625),  # type: ignore[arg-type]
    )
    # 303,376.754150390625 / 100
    assert by_key[("serverless-aws", 16)].usd_per_month_per_mb_per_s == pytest.approx(
        3033.76754150390625
    )
    assert by_key[("grpc-vm", 16)].usd_per_month_per_mb_per_s == pytest.approx(514.8544)
    assert by_key[("ambrosia-vm", 16)].usd_per_month_per_mb_per_s == pytest.approx(34.0691)
    # No VM rows where nothing was measured.
    assert ("grpc-vm", 1024) not in by_key and ("serverless-aws", 1024) in by_key


def test_bad_sheets_are_refused(tmp_path: Path) -> None:
    no_source = tmp_path / "a.toml"
    no_source.write_text('design = "vm"\n')
    with pytest.raises(ValueError, match="source and date"):
        cost.load_price_sheet(no_source)
    unknown = tmp_path / "b.toml"
    unknown.write_text('design = "mainframe"\nsource = "x"\ndate = "2020"\n')
    with pytest.raises(ValueError, match="mainframe"):
        cost.load_price_sheet(unknown)
    text = (CONFIGS / "prices-azure.toml").read_text().replace("state_gb", "state_gigs")
    typo = tmp_path / "c.toml"
    typo.write_text(text)
    with pytest.raises(ValueError, match="state_gigs"):
        cost.load_price_sheet(typo)


@pytest.mark.parametrize(
    ("sheet", "old", "new", "message"),
    [
        # A sheet from before the record limits: refused, naming the key it lacks.
        ("prices-aws.toml", "shard_records_per_s = 1000\n", "", "shard_records_per_s"),
        ("prices-azure.toml", "throughput_unit_events_per_s = 1000\n", "", "events_per_s"),
        (
            "prices-aws.toml",
            "shard_records_per_s = 1000",
            "shard_records_per_s = 0",
            r"\[kinesis\]: kinesis: shard_records_per_s must be positive",
        ),
        (
            "prices-azure.toml",
            "throughput_unit_events_per_s = 1000",
            'throughput_unit_events_per_s = "1000"',
            r"\[event_hubs\]: throughput_unit_events_per_s must be a number",
        ),
        (
            "prices-azure.toml",
            "batch_bytes_max = 262144",
            "batch_bytes_max = 262144.5",
            "batch_bytes_max must be an integer",
        ),
        ("prices-aws.toml", "hours_per_month = 730.0\n", "", "hours_per_month"),
    ],
)
def test_sheets_with_a_bad_field_are_refused(
    tmp_path: Path, sheet: str, old: str, new: str, message: str
) -> None:
    text = (CONFIGS / sheet).read_text()
    assert old in text
    broken = tmp_path / sheet
    broken.write_text(text.replace(old, new))
    with pytest.raises(ValueError, match=message):
        cost.load_price_sheet(broken)


def test_deployment_cost_is_nodes_plus_log_bandwidth() -> None:
    prices = cost.VmPrices(
        source="s",
        date="d",
        vm_name="vm",
        vm_usd_per_month=100.0,
        vms_per_pair=1,
        storage_usd_per_month_per_100_mb_per_s=20.0,
        log_bytes_per_ingested_byte=2.0,
        storage_bandwidth_cap_mb_per_s=96.0,
    )
    bill = cost.deployment_cost(prices, nodes=3, log_mb_per_s=10.0)
    assert bill.storage_usd_per_month == pytest.approx(10.0 * 2.0 * 20.0 / 100.0)
    assert bill.usd_per_month == pytest.approx(300.0 + 4.0)
    with pytest.raises(ValueError, match="nodes"):
        cost.deployment_cost(prices, nodes=0, log_mb_per_s=1.0)
    with pytest.raises(ValueError, match="negative"):
        cost.deployment_cost(prices, nodes=1, log_mb_per_s=-1.0)


def test_aws_deployment_sheet_loads_and_prices_each_term() -> None:
    prices = cost.load_price_sheet(CONFIGS / "prices-eks.toml")
    assert isinstance(prices, cost.AwsDeploymentPrices)
    assert prices.region == "us-east-1" and prices.date and "AWS" in prices.source
    usage = cost.AwsDeploymentUsage(
        nodes=3,
        node_disk_gb=20.0,
        instances=4,
        volume_gb=10.0,
        log_mb_per_s=2.0,
        log_puts_per_s=10.0,
        stored_days=7.0,
        catalog_reads_per_s=1.0,
        catalog_writes_per_s=0.5,
        standbys=2,
    )
    bill = cost.aws_deployment_cost(prices, usage)
    seconds = HOURS * 3600.0
    assert bill.node_usd_per_month == pytest.approx(prices.ec2.usd_per_node_hour * HOURS)
    assert bill.cluster_usd_per_month == pytest.approx(prices.eks.usd_per_cluster_hour * HOURS)
    assert bill.disk_gb == 3 * 20 + (4 + 2) * 10
    assert bill.disks_usd_per_month == pytest.approx(120 * prices.ebs.usd_per_gb_month)
    assert bill.puts_per_month == pytest.approx(10.0 * seconds)
    assert bill.puts_usd_per_month == pytest.approx(10.0 * seconds / 1000 * 0.005)
    # 2 MB/s for 7 days: 2e6 B/s * 604,800 s = 1,209.6 GB.
    assert bill.stored_gb == pytest.approx(1209.6)
    assert bill.stored_usd_per_month == pytest.approx(1209.6 * prices.s3.usd_per_gb_month)
    assert bill.catalog_usd_per_month == pytest.approx((1.0 * 0.125 + 0.5 * 0.625) * seconds / 1e6)
    assert bill.usd_per_month == pytest.approx(
        3 * bill.node_usd_per_month
        + bill.cluster_usd_per_month
        + bill.disks_usd_per_month
        + bill.puts_usd_per_month
        + bill.stored_usd_per_month
        + bill.standbys_usd_per_month
        + bill.catalog_usd_per_month
    )
    without_cluster = cost.aws_deployment_cost(
        prices, cost.AwsDeploymentUsage(nodes=3, cluster=False)
    )
    assert without_cluster.cluster_usd_per_month == 0.0
    with pytest.raises(ValueError, match="nodes"):
        cost.AwsDeploymentUsage(nodes=0)
    with pytest.raises(ValueError, match="log_puts_per_s"):
        cost.AwsDeploymentUsage(log_puts_per_s=-1.0)
    with pytest.raises(ValueError, match="standbys"):
        cost.AwsDeploymentUsage(standbys=-1)
    # A deployment sheet prices what was provisioned: it is no design of the cost figure.
    assert cost.cost_points([prices], [16, 1024], {("ambrosia", 16): 10.0}) == []


def test_aws_standby_request_rates_are_the_standbys_defaults_on_a_cloud_log() -> None:
    from ambrosia.coordinator.standby import _LISTING_EVERY_IDLE_POLLS, StandbySettings

    settings = StandbySettings.for_log("s3://bucket/prefix")
    usage = cost.AwsDeploymentUsage()
    polls = 1 / settings.poll_interval_s
    # Each poll reads the next page object, every fifth idle one the metadata, each lease
    # try the lock: GETs all; an idle standby never lists.
    assert usage.standby_lists_per_s == 0
    lease_tries = 1 / settings.lease_poll_interval_s
    assert usage.standby_gets_per_s == pytest.approx(
        polls + polls / _LISTING_EVERY_IDLE_POLLS + lease_tries
    )
    assert usage.standby_puts_per_s == pytest.approx(1 / settings.board_interval_s)


def test_aws_deployment_sheet_keys_are_checked(tmp_path: Path) -> None:
    text = (CONFIGS / "prices-eks.toml").read_text()
    broken = tmp_path / "prices-eks.toml"
    broken.write_text(text.replace("usd_per_1000_puts", "usd_per_1000_put"))
    with pytest.raises(ValueError, match=r"\[s3\].*usd_per_1000_put"):
        cost.load_price_sheet(broken)
    broken.write_text(text.replace('region = "us-east-1"\n', ""))
    with pytest.raises(ValueError, match="region"):
        cost.load_price_sheet(broken)


def test_aws_standby_request_rates_match_the_counted_table() -> None:
    """The model's idle standby is the one `ambrosia-bench standby-cost` counted on s3."""
    doc = (CONFIGS.parent / "docs" / "high-availability.md").read_text()
    row = re.search(r"^\| s3 \| idle \| ([\d.]+) \| put ([\d.]+), get ([\d.]+) \|", doc, re.M)
    assert row is not None, "docs/high-availability.md has no counted s3 idle row"
    total, puts, gets = (float(value) for value in row.groups())
    usage = cost.AwsDeploymentUsage()
    modelled_puts = usage.standby_lists_per_s + usage.standby_puts_per_s
    modelled = modelled_puts + usage.standby_gets_per_s
    # The count is a 20 s window (lease tries land on the lock's expiry, not every poll):
    # the model may round up, by a little, never down.
    assert total <= modelled <= total * 1.25
    assert puts <= modelled_puts <= puts * 1.25
    assert gets <= usage.standby_gets_per_s <= gets * 1.25
