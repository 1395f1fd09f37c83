#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier {

// XXH3 64-bit hash, seed 0 (equals xxhash.xxh3_64_intdigest in Python).
std::uint64_t checksum_bytes(const void* data, std::size_t n);

}  // namespace kvtier
