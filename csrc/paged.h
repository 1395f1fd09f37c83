// Paged gather/scatter between an engine's paged KV cache and contiguous kvtier pages:
// the CPU reference of the CUDA kernels in csrc/cuda/paged_copy.cu (same tables, same
// page layout, byte for byte).  kvtier/layout.py builds the tables from a KVLayout.
//
// The cache is described as num_segments *segments*: one per (layer, K/V) for most layouts.
// Segment s has a base address and a block stride in bytes; engine block b of segment s is
// the chunk_bytes contiguous bytes at segments[2s] + b * segments[2s + 1].
//
// Page p (address pages[p]) gathers blocks_per_page engine blocks
// block_ids[p * blocks_per_page + j], j = 0 .. blocks_per_page - 1, laid out as
//
//     page[s][j][0 .. chunk_bytes)      i.e. byte (s * blocks_per_page + j) * chunk_bytes
//
// so a page is num_segments * blocks_per_page * chunk_bytes bytes.  gather copies cache ->
// pages, scatter pages -> cache.  Tables are int64: pages[num_pages],
// segments[2 * num_segments], block_ids[num_pages * blocks_per_page].  Nothing is checked
// here: the caller validated every address and block id (layout.py does).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier {

struct PagedCopy {
  bool gather;
  const std::int64_t* pages;
  const std::int64_t* segments;
  const std::int64_t* block_ids;
  std::size_t num_pages;
  std::size_t blocks_per_page;
  std::size_t num_segments;
  std::size_t chunk_bytes;
};

// Copies on the calling thread (the reference; the GPU path is the fast one).
void paged_copy(const PagedCopy& op) noexcept;

}  // namespace kvtier
