"""``kvtier bench``: throughput of the store's tiers beside physical ceilings measured in the same run."""

from .host import HostBenchResult, HostBenchSettings, run_host_bench

__all__ = ["HostBenchResult", "HostBenchSettings", "run_host_bench"]
