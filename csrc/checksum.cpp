// The vendored single-header xxHash (third_party/xxhash), compiled inline into
// this translation unit only.  Without -march flags XXH3 uses SSE2 on x86-64
// (NEON on arm64), which every machine of those architectures has.
#define XXH_INLINE_ALL
#include "xxhash.h"

#include "checksum.h"

namespace kvtier {

std::uint64_t checksum_bytes(const void* data, std::size_t n) { return XXH3_64bits(data, n); }

}  // namespace kvtier
