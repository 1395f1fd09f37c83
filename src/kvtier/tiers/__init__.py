"""Storage media. Each tier moves bytes only: no policy, no bookkeeping beyond its medium."""

from .base import Tier, TierCapabilities
from .disk import DiskTier
from .host import HostArena

__all__ = ["Tier", "TierCapabilities", "HostArena", "DiskTier"]
