#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier {

// Byte-plane split ("shuffle") of n bytes of elements of elem_bytes each, the
// filter in front of zstd for KV pages (exponent bytes compress, mantissas do not).
//
// elem_bytes 2 or 4: output plane k holds byte k of every element, planes back to
// back; elem_bytes 1: bit planes instead (plane p holds bit 7-p of every byte,
// eight elements per output byte, the first element in the most significant bit,
// as numpy.packbits). The tail (n % elem_bytes bytes, or n % 8 for bit planes) is
// copied unchanged after the planes. dst and src must not overlap.
void shuffle_bytes(std::uint8_t* dst, const std::uint8_t* src, std::size_t n, int elem_bytes);

// The exact inverse of shuffle_bytes.
void unshuffle_bytes(std::uint8_t* dst, const std::uint8_t* src, std::size_t n, int elem_bytes);

}  // namespace kvtier
