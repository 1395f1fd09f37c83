// XXH3 compiled for AVX2 (about 2.5x the SSE2 baseline on the development VM),
// used by checksum.cpp when the CPU has it.  The rest of the module stays
// baseline x86-64, so the wheel runs on any x86-64 machine.
#include "checksum.h"

// Every header with inline code comes before the pragma, so only this file's
// functions (and the static xxHash ones) are compiled for AVX2.
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>  // xxhash.h includes it only under -mavx2; its functions carry their own targets
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include "xxhash.h"

#define KVTIER_CHECKSUM(name) checksum_##name##_avx2
#include "checksum_impl.h"

namespace kvtier {
bool checksum_avx2_built() { return true; }
}  // namespace kvtier
#else
namespace kvtier {
bool checksum_avx2_built() { return false; }
std::uint64_t checksum_bytes_avx2(const void*, std::size_t) { return 0; }
bool checksum_iov_avx2(const iovec*, std::size_t, std::size_t, std::size_t, std::uint64_t*) {
  return false;
}
}  // namespace kvtier
#endif
