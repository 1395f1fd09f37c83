// The vendored single-header xxHash (third_party/xxhash), compiled inline into
// this translation unit only.  Without -march flags XXH3 uses SSE2 on x86-64
// (NEON on arm64), which every machine of those architectures has.
#define XXH_INLINE_ALL
#include "xxhash.h"

#include "checksum.h"

#include <algorithm>

namespace kvtier {

std::uint64_t checksum_bytes(const void* data, std::size_t n) { return XXH3_64bits(data, n); }

bool checksum_iov(const iovec* iov, std::size_t iovcnt, std::size_t skip, std::size_t n,
                  std::uint64_t* out) {
  std::size_t i = 0;
  for (; i < iovcnt && skip >= iov[i].iov_len; ++i) skip -= iov[i].iov_len;
  if (i < iovcnt && skip + n <= iov[i].iov_len) {  // one span: the one-shot hash
    *out = XXH3_64bits(static_cast<const char*>(iov[i].iov_base) + skip, n);
    return true;
  }
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (; i < iovcnt && n > 0; ++i) {
    const std::size_t take = std::min(n, iov[i].iov_len - skip);
    XXH3_64bits_update(&state, static_cast<const char*>(iov[i].iov_base) + skip, take);
    n -= take;
    skip = 0;
  }
  if (n > 0) return false;
  *out = XXH3_64bits_digest(&state);
  return true;
}

}  // namespace kvtier
