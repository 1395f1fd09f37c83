// The bodies of the XXH3 checksums, included by checksum.cpp (baseline vector
// code) and checksum_avx2.cpp (AVX2), each with XXH_INLINE_ALL, so each copy of
// xxHash is compiled for its own instruction set.  Define KVTIER_CHECKSUM(name)
// before including.  Nothing here may instantiate a template or call an inline
// library function: under checksum_avx2.cpp's target pragma that code would be
// compiled for AVX2, and the linker could pick that copy for the whole module.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace kvtier {

std::uint64_t KVTIER_CHECKSUM(bytes)(const void* data, std::size_t n) { return XXH3_64bits(data, n); }

bool KVTIER_CHECKSUM(iov)(const iovec* iov, std::size_t iovcnt, std::size_t skip, std::size_t n,
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
    const std::size_t left = iov[i].iov_len - skip;
    const std::size_t take = n < left ? n : left;  // no std::min: no template instantiated here
    XXH3_64bits_update(&state, static_cast<const char*>(iov[i].iov_base) + skip, take);
    n -= take;
    skip = 0;
  }
  if (n > 0) return false;
  *out = XXH3_64bits_digest(&state);
  return true;
}

}  // namespace kvtier
