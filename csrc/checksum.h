#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace kvtier {

// XXH3 64-bit hash, seed 0 (equals xxhash.xxh3_64_intdigest in Python).
std::uint64_t checksum_bytes(const void* data, std::size_t n);

// XXH3-64 of bytes [skip, skip + n) of the concatenation of iov[0..iovcnt):
// equal to checksum_bytes over those bytes laid out contiguously.  Returns
// false (and leaves *out alone) if the iovecs hold fewer than skip + n bytes.
bool checksum_iov(const iovec* iov, std::size_t iovcnt, std::size_t skip, std::size_t n,
                  std::uint64_t* out);

// Which vector code the checksums run: "avx2" where the CPU has it, else "baseline"
// (SSE2 on x86-64, NEON on arm64).
const char* checksum_isa();

}  // namespace kvtier
