from __future__ import annotations

import pytest

from kvtier import ConfigError, HostTierConfig, StoreConfig
from kvtier.units import GiB, KiB, MiB, parse_size


@pytest.mark.parametrize("text,expected", [
    ("4096", 4096), (4096, 4096), ("64KiB", 64 * KiB), ("1.5GiB", int(1.5 * GiB)), ("2MB", 2_000_000),
    ("1 gib", GiB),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "12 parsecs", "-1KiB", True])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError):
        parse_size(text)


def test_defaults_are_valid():
    cfg = StoreConfig()
    assert cfg.host.slot_count == cfg.host.capacity_bytes // cfg.host.slot_bytes
    assert cfg.policy == "lru" and cfg.ttl_s is None


@pytest.mark.parametrize("kwargs,match", [
    ({"policy": "fifo"}, "policy"),
    ({"ttl_refresh": "sometimes"}, "ttl_refresh"),
    ({"ttl_s": 0}, "ttl_s"),
    ({"ttl_s": -5.0}, "ttl_s"),
    ({"max_pinned_fraction": 1.5}, "max_pinned_fraction"),
    ({"ghost_entries": -1}, "ghost_entries"),
    ({"async_workers": 0}, "async_workers"),
    ({"host": "big"}, "HostTierConfig"),
])
def test_store_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StoreConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"slot_bytes": 0}, "slot_bytes"),
    ({"capacity_bytes": 1000, "slot_bytes": 4096}, "at least one"),
    ({"capacity_bytes": "lots"}, "cannot parse"),
    ({"capacity_bytes": 1.5}, "capacity_bytes"),
])
def test_host_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HostTierConfig(**kwargs)


def test_size_strings_accepted_in_dataclass():
    assert HostTierConfig(capacity_bytes="8MiB", slot_bytes="64KiB").slot_count == 128


def test_from_env_reads_every_section():
    cfg = StoreConfig.from_env({
        "KVTIER_POLICY": "ttl", "KVTIER_TTL_S": "300", "KVTIER_TTL_REFRESH": "read",
        "KVTIER_HOST_CAPACITY_BYTES": "64MiB", "KVTIER_HOST_SLOT_BYTES": "256KiB",
        "KVTIER_HOST_PREFAULT": "false", "KVTIER_HOST_VERIFY_CHECKSUMS": "1",
        "KVTIER_NATIVE": "auto", "PATH": "/bin",
    })
    assert cfg.policy == "ttl" and cfg.ttl_s == 300.0 and cfg.ttl_refresh == "read"
    assert cfg.host == HostTierConfig(capacity_bytes=64 * MiB, slot_bytes=256 * KiB,
                                      prefault=False, verify_checksums=True)


def test_from_env_rejects_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="KVTIER_HOST_CAPACITY"):
        StoreConfig.from_env({"KVTIER_HOST_CAPACITY": "1GiB"})
    with pytest.raises(ConfigError, match="host.prefault"):
        StoreConfig.from_env({"KVTIER_HOST_PREFAULT": "maybe"})
    with pytest.raises(ConfigError, match="ttl_s"):
        StoreConfig.from_env({"KVTIER_TTL_S": "soon"})


def test_from_env_accepts_the_variables_that_are_not_settings():
    """KVTIER_* variables read by the native module, the build or the scripts are not typos."""
    from kvtier.config import OTHER_ENV
    from kvtier.integrations.common import env_table

    others = {name: "1" for name in OTHER_ENV}
    assert StoreConfig.from_env({**others, "KVTIER_POLICY": "ttl"}).policy == "ttl"
    assert env_table({**others, "KVTIER_POLICY": "ttl"}) == {"policy": "ttl"}
    assert {"KVTIER_CHECKSUM_ISA", "KVTIER_IO_ENGINE", "KVTIER_NATIVE"} <= OTHER_ENV
    with pytest.raises(ConfigError, match="KVTIER_CHECKSUM_ISAX"):
        StoreConfig.from_env({"KVTIER_CHECKSUM_ISAX": "baseline"})


def test_from_env_none_ttl():
    assert StoreConfig.from_env({"KVTIER_TTL_S": "none"}).ttl_s is None


def test_from_file(tmp_path):
    path = tmp_path / "kvtier.toml"
    path.write_text('policy = "ttl"\nttl_s = 3600\n[host]\ncapacity_bytes = "32MiB"\nslot_bytes = 1048576\n')
    cfg = StoreConfig.from_file(path)
    assert cfg.policy == "ttl" and cfg.ttl_s == 3600 and cfg.host.slot_count == 32
    path.write_text('[host]\ncapacity = "1GiB"\n')
    with pytest.raises(ConfigError, match="host.capacity"):
        StoreConfig.from_file(path)
    path.write_text("policy = \n")
    with pytest.raises(ConfigError, match="TOML"):
        StoreConfig.from_file(path)
