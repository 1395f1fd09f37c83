"""``kvtier bench --gpu``: the GPU paths beside their ceilings, measured in the same run.

* D2H / H2D: ``TieredStore.put`` of CUDA pages into the (pinned) host tier and
  ``get_into`` CUDA tensors back, against raw pinned ``cudaMemcpyAsync`` of the same pages
  on one stream (``kvtier._cuda.memcpy_async``).
* gather / scatter: the paged kernels on a vLLM-shaped cache (random block ids, all layers)
  against a device-to-device ``cudaMemcpyAsync`` of the same bytes. Bandwidth counts each
  page byte once (as the memcpy's does).

Targets (docs/BENCHMARKS.md): D2H/H2D >= 90 % of the pinned memcpy, gather/scatter >= 80 % of
the device memcpy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .. import gpu


@dataclass(frozen=True, slots=True)
class GpuBenchSettings:
    page_sizes: tuple[int, ...] = (256 << 10, 1 << 20, 4 << 20)
    bytes_per_run: int = 512 << 20      # page bytes per D2H/H2D measurement
    trials: int = 5                     # best kept
    num_layers: int = 32                # the gather/scatter cache (Llama-3-8B shaped by default)
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16
    blocks_per_page: int = 16
    cache_blocks: int = 4096
    pages_per_batch: int = 32
    dtype: str = "bfloat16"


@dataclass(slots=True)
class CopyRow:
    page_bytes: int
    d2h: float = 0.0             # bytes/s: put of CUDA pages into the host tier
    d2h_ceiling: float = 0.0     # bytes/s: raw pinned cudaMemcpyAsync D2H
    h2d: float = 0.0             # bytes/s: get_into CUDA tensors
    h2d_ceiling: float = 0.0

    @property
    def ratios(self) -> tuple[float, float]:
        return self.d2h / self.d2h_ceiling, self.h2d / self.h2d_ceiling


@dataclass(slots=True)
class GpuBenchResult:
    settings: GpuBenchSettings
    device: str
    runtime: str
    copies: list[CopyRow] = field(default_factory=list)
    page_bytes: int = 0          # gather/scatter page
    gather: float = 0.0          # bytes/s
    scatter: float = 0.0
    memcpy_d2d: float = 0.0      # bytes/s, ceiling
    host_pinned: bool = False

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["copies"] = [dict(asdict(r), d2h_ratio=r.ratios[0], h2d_ratio=r.ratios[1]) for r in self.copies]
        doc["gather_ratio"] = self.gather / self.memcpy_d2d
        doc["scatter_ratio"] = self.scatter / self.memcpy_d2d
        return doc


def _best(trials: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(trials))


def run_gpu_bench(settings: GpuBenchSettings, progress: Callable[[str], None] = lambda s: None) -> GpuBenchResult:
    """Run every measurement; raises ``GpuUnavailableError`` where CUDA is not usable."""
    mod = gpu.require()
    import torch

    from ..config import HostTierConfig, StoreConfig
    from ..layout import KVLayout
    from ..store import TieredStore

    dev = torch.device("cuda", torch.cuda.current_device())
    result = GpuBenchResult(settings, torch.cuda.get_device_name(dev),
                            f"CUDA runtime {mod.RUNTIME_VERSION} (kvtier._cuda), torch {torch.__version__}")
    stream = torch.cuda.Stream(dev)
    for size in settings.page_sizes:
        count = max(4, settings.bytes_per_run // size)
        row = CopyRow(size)
        src = [torch.randint(0, 255, (size,), dtype=torch.uint8, device=dev) for _ in range(count)]
        outs = [torch.empty_like(t) for t in src]
        host = torch.empty(count * size, dtype=torch.uint8, pin_memory=True)

        def raw(to_host: bool) -> float:
            torch.cuda.synchronize(dev)
            start = time.perf_counter()
            for i, t in enumerate(src):
                h = host.data_ptr() + i * size
                if to_host:
                    mod.memcpy_async(h, t.data_ptr(), size, dev.index, stream.cuda_stream)
                else:
                    mod.memcpy_async(outs[i].data_ptr(), h, size, dev.index, stream.cuda_stream)
            stream.synchronize()
            return time.perf_counter() - start

        row.d2h_ceiling = count * size / _best(settings.trials, lambda: raw(True))
        row.h2d_ceiling = count * size / _best(settings.trials, lambda: raw(False))
        # twice the pages: a trial's puts replace the previous trial's without evicting any
        config = StoreConfig(host=HostTierConfig(capacity_bytes=2 * count * size, slot_bytes=size))
        with TieredStore(config) as store:
            result.host_pinned = bool(store.stats().tier("host").extra.get("cuda_pinned"))
            keys = [i.to_bytes(8, "little") for i in range(count)]

            def puts() -> float:
                torch.cuda.synchronize(dev)
                start = time.perf_counter()
                for key, t in zip(keys, src):
                    store.put(key, t)
                store.synchronize()
                return time.perf_counter() - start

            def gets() -> float:
                torch.cuda.synchronize(dev)
                start = time.perf_counter()
                for key, out in zip(keys, outs):
                    store.get_into(key, out)
                torch.cuda.synchronize(dev)
                return time.perf_counter() - start

            row.d2h = count * size / _best(settings.trials, puts)
            row.h2d = count * size / _best(settings.trials, gets)
            if not all(torch.equal(a, b) for a, b in zip(src, outs)):
                raise RuntimeError("kvtier bench --gpu: a page came back different from what was put")
        result.copies.append(row)
        progress(f"D2H/H2D {size >> 10} KiB")

    s = settings
    layout = KVLayout.vllm(s.num_layers, s.cache_blocks, s.block_size, s.num_kv_heads, s.head_dim, s.dtype)
    dt = getattr(torch, layout.dtype)
    caches = [torch.empty((2, s.cache_blocks, s.block_size, s.num_kv_heads, s.head_dim), dtype=dt,
                          device=dev) for _ in range(s.num_layers)]
    for c in caches:
        c.view(torch.uint8).random_()
    bound = layout.bind(caches)
    gen = torch.Generator().manual_seed(0)
    n = s.pages_per_batch * s.blocks_per_page
    ids = torch.randperm(s.cache_blocks, generator=gen)[:n].reshape(s.pages_per_batch, s.blocks_per_page)
    result.page_bytes = layout.page_bytes(s.blocks_per_page)
    pages = [torch.empty(result.page_bytes, dtype=torch.uint8, device=dev) for _ in range(s.pages_per_batch)]
    total = result.page_bytes * s.pages_per_batch
    flat_src = torch.empty(total, dtype=torch.uint8, device=dev)
    flat_dst = torch.empty_like(flat_src)

    def timed(fn: Callable[[], None]) -> float:
        fn()  # warm-up (table staging, first launch)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record(stream)
            fn()
            end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    result.memcpy_d2d = total / _best(s.trials, lambda: timed(lambda: mod.memcpy_async(
        flat_dst.data_ptr(), flat_src.data_ptr(), total, dev.index, stream.cuda_stream)))
    result.gather = total / _best(s.trials, lambda: timed(lambda: bound.gather(ids, pages, stream=stream)))
    result.scatter = total / _best(s.trials, lambda: timed(lambda: bound.scatter(pages, ids, stream=stream)))
    progress("gather/scatter")
    return result


def print_gpu_tables(result: GpuBenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..config import format_size

    def gbs(v: float) -> str:
        return f"{v / 1e9:.2f}"

    console = Console()
    pinned = "pinned" if result.host_pinned else "NOT pinned (cudaHostRegister refused)"
    table = Table(title=f"GPU ↔ host tier · {result.device} · host arena {pinned} · {result.runtime}",
                  caption="GB/s; ceiling: raw cudaMemcpyAsync between the same device pages and "
                          "pinned host memory, one stream, same run; best of "
                          f"{result.settings.trials}")
    table.add_column("GB/s and ratios")
    for row in result.copies:
        table.add_column(format_size(row.page_bytes), justify="right")
    for label, cell in [("put (D2H)", lambda r: gbs(r.d2h)), ("cudaMemcpyAsync D2H", lambda r: gbs(r.d2h_ceiling)),
                        ("put / memcpy", lambda r: f"{r.ratios[0]:.0%}"),
                        ("get_into (H2D)", lambda r: gbs(r.h2d)), ("cudaMemcpyAsync H2D", lambda r: gbs(r.h2d_ceiling)),
                        ("get_into / memcpy", lambda r: f"{r.ratios[1]:.0%}")]:
        table.add_row(label, *(cell(row) for row in result.copies))
    console.print(table)
    s = result.settings
    doc = result.to_json()
    console.print(f"paged kernels · vLLM cache L={s.num_layers} H={s.num_kv_heads} D={s.head_dim} "
                  f"{s.dtype}, {s.pages_per_batch} pages of {format_size(result.page_bytes)} per launch: "
                  f"gather {gbs(result.gather)} GB/s ({doc['gather_ratio']:.0%}), scatter "
                  f"{gbs(result.scatter)} GB/s ({doc['scatter_ratio']:.0%}) of device memcpy "
                  f"{gbs(result.memcpy_d2d)} GB/s")
