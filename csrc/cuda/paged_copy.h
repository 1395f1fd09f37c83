// Host-side entry of the paged gather/scatter kernels (paged_copy.cu); see csrc/paged.h for
// the tables and the page layout, which the CPU reference shares.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvtier_cuda {

// Largest piece of a chunk one CTA moves in one step.
constexpr std::int64_t kPieceBytes = 16 << 10;

struct PagedCopyArgs {
  bool gather;                   // cache -> pages (else pages -> cache)
  const std::int64_t* pages;     // device: [num_pages] page addresses
  const std::int64_t* segments;  // device: [2 * num_segments] (base address, block stride)
  const std::int64_t* block_ids; // device: [num_pages * blocks_per_page]
  std::int64_t num_pages;
  std::int64_t blocks_per_page;
  std::int64_t num_segments;
  std::int64_t chunk_bytes;
  int vector_bytes;              // 16, 8, 4, 2 or 1: divides every address, stride and size
  int device;                    // CUDA device the caches, pages, tables and stream are on
  cudaStream_t stream;
};

// Enqueues the copy on a.stream (one launch); returns the launch error, if any.
cudaError_t paged_copy(const PagedCopyArgs& a);

}  // namespace kvtier_cuda
