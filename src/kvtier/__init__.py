"""kvtier: offload LLM KV-cache pages across memory tiers (GPU HBM, host DRAM, NVMe, Redis)."""

from .config import DeviceTierConfig, DiskTierConfig, HostTierConfig, RemoteTierConfig, StoreConfig
from .errors import (BufferSizeError, ConfigError, InvalidArgumentError, InvalidKeyError,
                     KvtierError, NonContiguousError, ReadOnlyBufferError, StoreClosedError,
                     TierInUseError, UnsupportedValueError, ValueTooLargeError)
from .keys import BlockKey, Namespace
from .metrics import MissReason, StoreStats, TierStats
from .store import TieredStore

__version__ = "0.1.0"

__all__ = [
    "TieredStore", "StoreConfig", "HostTierConfig", "DiskTierConfig", "RemoteTierConfig", "DeviceTierConfig", "BlockKey", "Namespace", "MissReason",
    "StoreStats", "TierStats", "KvtierError", "ConfigError", "InvalidArgumentError",
    "InvalidKeyError", "UnsupportedValueError", "NonContiguousError", "ValueTooLargeError",
    "BufferSizeError", "ReadOnlyBufferError", "StoreClosedError", "TierInUseError", "__version__",
]
