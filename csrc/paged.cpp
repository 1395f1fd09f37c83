#include "paged.h"

#include <cstring>

namespace kvtier {

void paged_copy(const PagedCopy& op) noexcept {
  for (std::size_t p = 0; p < op.num_pages; ++p) {
    auto* page = reinterpret_cast<char*>(static_cast<std::uintptr_t>(op.pages[p]));
    const std::int64_t* ids = op.block_ids + p * op.blocks_per_page;
    for (std::size_t s = 0; s < op.num_segments; ++s) {
      auto* base = reinterpret_cast<char*>(static_cast<std::uintptr_t>(op.segments[2 * s]));
      const std::int64_t stride = op.segments[2 * s + 1];
      char* out = page + s * op.blocks_per_page * op.chunk_bytes;
      for (std::size_t j = 0; j < op.blocks_per_page; ++j, out += op.chunk_bytes) {
        char* block = base + ids[j] * stride;
        if (op.gather) {
          std::memcpy(out, block, op.chunk_bytes);
        } else {
          std::memcpy(block, out, op.chunk_bytes);
        }
      }
    }
  }
}

}  // namespace kvtier
