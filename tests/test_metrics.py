"""The Prometheus exporter (kvtier.metrics, kvtier.prometheus): exact counter values scraped over
HTTP after scripted puts/gets/expiries, several stores per process, unregistering on close,
latency histograms, port errors, and docs/metrics.md against what is exported."""

from __future__ import annotations

import gc
import re
import socket
import subprocess
import sys
import threading
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import page
from kvtier import HostTierConfig, StoreConfig, TieredStore, metrics, prometheus
from kvtier.config import DiskTierConfig, RemoteTierConfig
from kvtier.errors import ConfigError, InvalidArgumentError, StoreClosedError, ValueTooLargeError
from kvtier.metrics import LatencyHistogram, MetricsServerError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


# -- helpers ----------------------------------------------------------------------------------
def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str, store: str) -> dict[tuple, float]:
    """``(sample name, sorted labels without store) -> value`` for one store's samples."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("store") != store:
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "store"))
            out[(s.name, labels)] = s.value
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def host_config(slots: int = 4, **kwargs) -> StoreConfig:
    return StoreConfig(host=HostTierConfig(capacity_bytes=slots * 4096, slot_bytes=4096, prefault=False),
                       **kwargs)


@pytest.fixture
def server():
    """An exporter on a free port, stopped at the end."""
    with metrics.start_http_server(0) as running:
        yield running


# -- exact values -----------------------------------------------------------------------------
def test_scripted_puts_gets_and_expiries_scrape_as_exact_counters(clock, server):
    store = TieredStore(host_config(slots=4, max_pinned_fraction=0.0), clock=clock)
    metrics.register(store, name="scripted")
    try:
        store.put(b"a", page(1), ttl_s=10)
        store.put(b"b", page(2))
        store.put(b"c", page(3))
        assert store.get(b"a") is not None
        assert store.get_into(b"b", bytearray(4096))
        assert store.get(b"x") is None                   # never_stored
        clock.advance(11)
        assert store.get(b"a") is None                   # expired
        store.put(b"d", page(4))
        store.put(b"e", page(5))                         # the tier is full now: b c d e
        store.put(b"f", page(6))                         # evicts c, the least recently used
        assert store.get(b"c") is None                   # evicted
        assert [v is not None for v in store.batch_get([b"b", b"d", b"zz"])] == [True, True, False]
        assert store.batch_put([b"h", b"i"], [page(7), page(8)]) == [True, True]  # evicts e, f
        assert store.lookup_prefix([b"b", b"d", b"h", b"i", b"zz"]) == 4
        assert store.batch_get_into([b"h", b"i"], [bytearray(4096), bytearray(4096)]) == [True, True]
        assert not store.put(b"z", page(9), pin=True)    # no pin budget: rejected
        with pytest.raises(ValueTooLargeError):
            store.put(b"big", bytes(8192))               # raised: neither counted nor timed

        got = samples(scrape(server.port), "scripted")
        host = (("tier", "host"),)
        expected = {
            ("kvtier_puts_total", ()): 9,
            ("kvtier_puts_rejected_total", ()): 1,
            ("kvtier_gets_total", ()): 10,
            ("kvtier_hits_total", ()): 6,
            ("kvtier_misses_total", (("reason", "never_stored"),)): 2,
            ("kvtier_misses_total", (("reason", "expired"),)): 1,
            ("kvtier_misses_total", (("reason", "evicted"),)): 1,
            ("kvtier_misses_total", (("reason", "corrupt"),)): 0,
            ("kvtier_misses_total", (("reason", "tier_unavailable"),)): 0,
            ("kvtier_misses_total", (("reason", "deadline"),)): 0,
            ("kvtier_tier_hits_total", host): 6,
            ("kvtier_tier_read_bytes_total", host): 6 * 4096,
            ("kvtier_tier_written_bytes_total", host): 8 * 4096,
            ("kvtier_tier_used_bytes", host): 4 * 4096,
            ("kvtier_tier_capacity_bytes", host): 4 * 4096,
            ("kvtier_tier_pinned_bytes", host): 0,
            ("kvtier_tier_slots_used", host): 4,
            ("kvtier_tier_slots", host): 4,
            ("kvtier_tier_entries", host): 4,
            ("kvtier_tier_evictions_total", host): 3,
            ("kvtier_tier_expirations_total", host): 1,
        }
        assert {key: got.get(key) for key in expected} == expected
        calls = {"put": 7, "get": 4, "get_into": 1, "batch_put": 1, "batch_get": 1,
                 "batch_get_into": 1, "lookup_prefix": 1}
        for op, n in calls.items():
            assert got[("kvtier_op_duration_seconds_count", (("op", op),))] == n, op
            assert got[("kvtier_op_duration_seconds_bucket", (("le", "+Inf"), ("op", op)))] == n
            assert got[("kvtier_op_duration_seconds_sum", (("op", op),))] > 0
        assert got[("kvtier_store_info", (("native_backend", store.stats().native_backend),))] == 1

        # the same figures as stats(), which the exporter reads at scrape time
        stats = store.stats()
        assert (stats.puts, stats.gets, stats.hits, stats.miss_count) == (9, 10, 6, 4)
        assert {op: snap.count for op, snap in stats.latency.items()} == calls
    finally:
        store.close()


def test_histogram_buckets_are_cumulative_and_count_every_call(make_store, server):
    store = make_store()
    metrics.register(store, name="hist")
    store.put(b"k", page(1))
    for _ in range(300):  # past one fold of the lock-free buffer
        store.get(b"k")
    got = samples(scrape(server.port), "hist")
    buckets = sorted(((float(dict(labels)["le"]), value) for (name, labels), value in got.items()
                      if name == "kvtier_op_duration_seconds_bucket" and dict(labels)["op"] == "get"))
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and counts[-1] == 300
    assert [le for le, _ in buckets[:-1]] == list(metrics.LATENCY_BUCKETS_S)
    snap = store.stats().latency["get"]
    assert snap.count == sum(snap.counts) == 300 and snap.cumulative[-1] == 300
    assert 0 < snap.mean_s < 1


def test_latency_histogram_loses_no_sample_across_threads():
    hist = LatencyHistogram()
    per_thread, threads = 5000, 4

    def work() -> None:
        for i in range(per_thread):
            hist.observe(i * 1e-6)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    snap = hist.snapshot()
    assert snap.count == sum(snap.counts) == per_thread * threads
    assert snap.sum_s == pytest.approx(threads * sum(i * 1e-6 for i in range(per_thread)))


def test_stores_are_not_timed_until_exported(make_store):
    store = make_store()
    store.put(b"k", page(1))
    assert store.stats().latency == {}  # no exporter: public calls cost no timing
    store.time_operations()
    store.get(b"k")
    assert store.stats().latency["get"].count == 1


# -- several stores, names, close ------------------------------------------------------------
def test_two_stores_at_once_and_close_unregisters(make_store, server):
    one, two = make_store(), make_store()
    metrics.register(one, name="one")
    metrics.register(two, name="two")
    one.put(b"a", page(1))
    for key in (b"a", b"b", b"c"):
        two.put(key, page(2))
    two.get(b"a")
    text = scrape(server.port)
    assert samples(text, "one")[("kvtier_puts_total", ())] == 1
    assert samples(text, "one")[("kvtier_gets_total", ())] == 0
    assert samples(text, "two")[("kvtier_puts_total", ())] == 3
    assert samples(text, "two")[("kvtier_hits_total", ())] == 1

    third = make_store()
    with pytest.raises(ConfigError, match="'two' is already registered"):
        metrics.register(third, name="two")
    with pytest.raises(InvalidArgumentError, match="non-empty string"):
        metrics.register(third, name="")

    two.close()
    text = scrape(server.port)
    assert samples(text, "two") == {}
    assert samples(text, "one")[("kvtier_puts_total", ())] == 1
    assert not metrics.unregister(two)
    with pytest.raises(StoreClosedError):
        metrics.register(two, name="again")
    metrics.register(third, name="two")  # the name is free again
    assert samples(scrape(server.port), "two")[("kvtier_puts_total", ())] == 0
    assert metrics.unregister(third) and samples(scrape(server.port), "two") == {}


def test_a_store_dropped_without_close_leaves_the_exporter(server):
    store = TieredStore(host_config())
    metrics.register(store, name="dropped")
    assert samples(scrape(server.port), "dropped")
    del store  # never closed: the collector holds it weakly
    gc.collect()
    assert samples(scrape(server.port), "dropped") == {}
    assert "dropped" not in prometheus.COLLECTOR.names()


# -- the metrics_port keyword, StoreConfig, errors ------------------------------------------------
def test_metrics_port_keyword_starts_joins_and_stops_the_exporter(clock):
    port = free_port()
    first = TieredStore(host_config(), clock=clock, metrics_port=port, metrics_name="first")
    second = TieredStore(host_config(metrics_port=port, metrics_name="second"), clock=clock)  # joins it
    first.put(b"k", page(1))
    second.get(b"k")
    text = scrape(port)
    assert samples(text, "first")[("kvtier_puts_total", ())] == 1
    assert samples(text, "second")[("kvtier_misses_total", (("reason", "never_stored"),))] == 1
    first.close()
    assert samples(scrape(port), "first") == {}
    second.close()  # the last store that asked for it: the exporter stops
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_an_explicit_server_outlives_the_stores_that_joined_it(server):
    store = TieredStore(host_config(), metrics_port=server.port, metrics_name="joined")
    assert samples(scrape(server.port), "joined")
    store.close()
    assert samples(scrape(server.port), "joined") == {}  # still serving
    assert metrics.start_http_server(server.port) is server  # same port: the same server


def test_a_port_in_use_is_a_clear_error_and_the_store_is_not_left_open(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(MetricsServerError, match=rf"127\.0\.0\.1:{port}: the port is in use.*metrics_port"):
            metrics.start_http_server(port)
        disk = DiskTierConfig(paths=[str(tmp_path / "d")], capacity_bytes="64KiB", fsync="never")
        config = StoreConfig(host=HostTierConfig(capacity_bytes="16KiB", slot_bytes="4KiB", prefault=False),
                             disk=disk)
        with pytest.raises(MetricsServerError, match="in use"):
            TieredStore(config, metrics_port=port, metrics_name="busy")
    assert "busy" not in prometheus.COLLECTOR.names()
    with TieredStore(config) as store:  # the failed store released its disk directory
        assert store.put(b"k", page(1))
    with pytest.raises(InvalidArgumentError, match="0 to 65535"):
        metrics.start_http_server(70000)


def test_metrics_settings_in_store_config_and_environment():
    config = StoreConfig.from_env({"KVTIER_METRICS_PORT": "9400", "KVTIER_METRICS_NAME": "rank0",
                                   "KVTIER_METRICS_ADDR": "0.0.0.0"})
    assert (config.metrics_port, config.metrics_name, config.metrics_addr) == (9400, "rank0", "0.0.0.0")
    assert StoreConfig().metrics_port is None and StoreConfig().metrics_addr == "127.0.0.1"
    with pytest.raises(ConfigError, match="metrics_port"):
        StoreConfig(metrics_port=-1)
    with pytest.raises(ConfigError, match="metrics_name"):
        StoreConfig(metrics_name="")


def test_importing_kvtier_does_not_import_prometheus_client():
    code = ("import sys, kvtier\n"
            "s = kvtier.TieredStore(kvtier.StoreConfig(host=kvtier.HostTierConfig("
            "capacity_bytes='64KiB', slot_bytes='4KiB', prefault=False)))\n"
            "s.put(b'k', b'x'); s.close()\n"
            "assert 'prometheus_client' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- disk, remote, routes: every exported name is documented ----------------------------------------
def exported_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            names.add(re.sub(r"_(bucket|count|sum)$", "", s.name) if family.type == "histogram" else s.name)
    return {n for n in names if n.startswith("kvtier_")}


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `(kvtier_[a-z_]+)`", DOCS.read_text(), flags=re.MULTILINE))


def test_docs_list_exactly_the_metrics_the_exporter_knows():
    assert documented_names() == set(prometheus.METRICS)
    for name, (kind, labels, _) in prometheus.METRICS.items():
        assert (kind == "counter") == name.endswith("_total"), name
        assert labels[0] == "store", name


def test_disk_tier_metrics(tmp_path, server):
    disk = DiskTierConfig(paths=[str(tmp_path / "d")], capacity_bytes="256KiB", fsync="never", codec="none")
    config = StoreConfig(host=HostTierConfig(capacity_bytes="16KiB", slot_bytes="4KiB", prefault=False),
                         disk=disk)
    with TieredStore(config, metrics_port=server.port, metrics_name="disk") as store:
        for i in range(12):  # 4 host slots: 8 pages are written back to disk
            store.put(b"%d" % i, page(i))
        assert store.get(b"0") is not None  # a disk hit, promoted
        text = scrape(server.port)
        got = samples(text, "disk")
        d = (("tier", "disk"),)
        assert got[("kvtier_tier_written_bytes_total", d)] >= 8 * 4096
        assert got[("kvtier_tier_hits_total", d)] == 1
        assert got[("kvtier_disk_io_errors_total", d)] == 0
        assert got[("kvtier_codec_ratio", d)] == 1.0
        info = [k for k in got if k[0] == "kvtier_disk_info"]
        assert len(info) == 1 and dict(info[0][1])["direct_io"] in ("true", "false")
        assert [k for k in got if k[0] == "kvtier_codec_info"] == [
            ("kvtier_codec_info", (("codec", "none"), ("codec_now", "none"), ("tier", "disk")))]
        assert got[("kvtier_route_transfers_total", (("route", "host->disk"),))] >= 8
        assert got[("kvtier_route_bandwidth_bytes_per_second", (("route", "host->disk"),))] > 0
        assert got[("kvtier_route_latency_seconds", (("route", "disk->host"),))] > 0
        assert exported_names(text) <= set(prometheus.METRICS)


@pytest.mark.redis
def test_remote_tier_metrics(redis_url, server):
    config = host_config(remote=RemoteTierConfig(url=redis_url, write_mode="sync"))
    with TieredStore(config, metrics_port=server.port, metrics_name="remote") as store:
        store.put(b"k", page(1))
        got = samples(scrape(server.port), "remote")
        r = (("tier", "remote"),)
        assert got[("kvtier_remote_breaker_state", (("state", "closed"), ("tier", "remote")))] == 1
        assert got[("kvtier_remote_breaker_state", (("state", "open"), ("tier", "remote")))] == 0
        assert got[("kvtier_remote_round_trips_total", r)] >= 1
        assert got[("kvtier_remote_errors_total", r)] == 0
        assert got[("kvtier_tier_written_bytes_total", r)] > 0
        assert ("kvtier_tier_evictions_total", r) not in got  # Redis evicts: kvtier cannot count it
        info = [dict(k[1]) for k in got if k[0] == "kvtier_remote_info"]
        assert info == [{"cluster": "false", "tier": "remote", "url": redis_url}]


# -- integrations --------------------------------------------------------------------------------
def sglang_storage_config(tmp_path: Path, tp: tuple[int, int], **extra) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        tp_rank=tp[0], tp_size=tp[1], pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, model_name="org/model", should_split_heads=False,
        extra_config={"storage_dir": str(tmp_path), **extra})


def test_sglang_metrics_port_gives_each_rank_its_own_port_and_label(tmp_path):
    from kvtier.integrations.sglang_config import SGLangBackendConfig

    config = SGLangBackendConfig.from_sglang(sglang_storage_config(tmp_path, (1, 2), metrics_port=9400), {})
    store = config.store_config(4096)
    assert store.metrics_port == 9401 and store.metrics_name == "sglang-tp1of2_pp0of1_cp0of1_dp0"
    from_env = SGLangBackendConfig.from_sglang(sglang_storage_config(tmp_path, (1, 2)),
                                               {"KVTIER_METRICS_PORT": "9500"})
    assert from_env.store_config(4096).metrics_port == 9501
    unset = SGLangBackendConfig.from_sglang(sglang_storage_config(tmp_path, (0, 1)), {})
    assert unset.store_config(4096).metrics_port is None
    with pytest.raises(ConfigError, match="metrics_port"):
        SGLangBackendConfig.from_sglang(sglang_storage_config(tmp_path, (0, 1), metrics_port="x"), {})
