// Memory copy engine: one memcpy for ordinary pages, a persistent worker pool
// for large ones.  Pure C++, no Python: copy_bytes() runs without the GIL.
#pragma once

#include <cstddef>

namespace kvtier {

// Copies n bytes.  Overlapping ranges are allowed (handled as one memmove).
// At or above copy_threshold() bytes the copy is split into 4 KiB-aligned
// chunks over copy_threads() threads (the caller plus pool workers).  Never
// throws: if the pool cannot be started, the caller copies everything itself.
void copy_bytes(void* dst, const void* src, std::size_t n) noexcept;

// Total threads taking part in a large copy, caller included (>= 1).
std::size_t copy_threads();
// 0 restores the default, min(4, CPUs available to this process).
void set_copy_threads(std::size_t n);

std::size_t copy_threshold();
void set_copy_threshold(std::size_t nbytes);

}  // namespace kvtier
