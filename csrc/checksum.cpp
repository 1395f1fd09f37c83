// The vendored single-header xxHash (third_party/xxhash), compiled inline into
// this translation unit only.  Without -march flags XXH3 uses SSE2 on x86-64
// (NEON on arm64), which every machine of those architectures has; where the
// CPU has AVX2, the copy in checksum_avx2.cpp runs instead (same results).
#define XXH_INLINE_ALL
#include "xxhash.h"

#include "checksum.h"

#include <cstdlib>
#include <cstring>

#define KVTIER_CHECKSUM(name) checksum_##name##_baseline
#include "checksum_impl.h"

namespace kvtier {

bool checksum_avx2_built();
std::uint64_t checksum_bytes_avx2(const void* data, std::size_t n);
bool checksum_iov_avx2(const iovec* iov, std::size_t iovcnt, std::size_t skip, std::size_t n,
                       std::uint64_t* out);

namespace {
// KVTIER_CHECKSUM_ISA=baseline turns the AVX2 code off (read once; for tests and triage).
bool use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = [] {
    const char* isa = std::getenv("KVTIER_CHECKSUM_ISA");
    if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
    return checksum_avx2_built() && __builtin_cpu_supports("avx2");
  }();
  return yes;
#else
  return false;
#endif
}
}  // namespace

std::uint64_t checksum_bytes(const void* data, std::size_t n) {
  return use_avx2() ? checksum_bytes_avx2(data, n) : checksum_bytes_baseline(data, n);
}

bool checksum_iov(const iovec* iov, std::size_t iovcnt, std::size_t skip, std::size_t n,
                  std::uint64_t* out) {
  return use_avx2() ? checksum_iov_avx2(iov, iovcnt, skip, n, out)
                    : checksum_iov_baseline(iov, iovcnt, skip, n, out);
}

const char* checksum_isa() { return use_avx2() ? "avx2" : "baseline"; }

}  // namespace kvtier
