"""The tier protocol and the capabilities the store routes on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import format_size
from ..errors import ValueTooLargeError


@dataclass(frozen=True, slots=True)
class TierCapabilities:
    """What a tier can do; the store routes on these, never on the tier's class."""

    persistent: bool = False          # survives a process restart
    shared: bool = False              # other processes/hosts see its blocks
    device_addressable: bool = False  # a GPU can DMA to/from it (pinned host, device memory)
    supports_batch: bool = False      # moves many blocks in one call


class Tier(Protocol):
    """A medium holding blocks in fixed-size slots addressed by slot number.

    ``write``/``read_into`` are called outside the store's lock, concurrently for different
    slots; the index guarantees a slot is never written while it is being read.
    """

    name: str
    capabilities: TierCapabilities
    slot_bytes: int
    slot_count: int

    def write(self, slot: int, src: memoryview) -> int | None:
        """Copy ``src`` (1-D bytes, ``len <= slot_bytes``) into ``slot``; returns its checksum
        when the tier verifies reads, else ``None``."""

    def read_into(self, slot: int, dst: memoryview, checksum: int | None) -> bool:
        """Copy ``len(dst)`` bytes of ``slot`` into ``dst``; ``False`` if they fail verification."""

    def stats_extra(self) -> dict[str, object]:
        """Tier-specific figures for ``TierStats.extra``."""

    def close(self) -> None:
        """Release the medium. Idempotent."""


def check_fits(tier: Tier, nbytes: int) -> None:
    """Refuse a page larger than ``tier``'s slots, saying what to change."""
    if nbytes > tier.slot_bytes:
        raise ValueTooLargeError(
            f"value is {format_size(nbytes)} but {tier.name} slots hold {format_size(tier.slot_bytes)}"
            f" ({tier.slot_bytes} bytes): raise {tier.name}.slot_bytes or split the page"
        )
