"""``kvtier sim``: replay serving traces through the store's own policies and price the result."""

from .simulator import Prices, SimConfig, SimResult, TierSpec, simulate
from .sweep import CapacitySweep, SweepPoint, Variant, run_sweep, run_variants
from .trace import Request, Trace, load_trace

__all__ = ["Prices", "SimConfig", "SimResult", "TierSpec", "simulate", "CapacitySweep",
           "SweepPoint", "Variant", "run_sweep", "run_variants", "Request", "Trace", "load_trace"]
