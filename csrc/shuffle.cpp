#include "shuffle.h"

#include <cstring>

namespace kvtier {
namespace {

// The 8x8 bit matrix in x (byte r = row r, bit c = column c) transposed: byte c of the
// result holds column c, row r in bit r (Hacker's Delight, transpose8).
inline std::uint64_t transpose8x8(std::uint64_t x) {
  std::uint64_t t;
  t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
  return x ^ t ^ (t << 28);
}

// Element j of a group goes to bit 7-j of each plane byte and bit 7-p of an element to
// plane p: byte-swap the group (row r = element 7-r), transpose, and plane p is byte 7-p.
void bit_shuffle(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  const std::size_t groups = n / 8;
  for (std::size_t g = 0; g < groups; ++g) {
    std::uint64_t word;
    std::memcpy(&word, src + 8 * g, 8);
    const std::uint64_t planes = transpose8x8(__builtin_bswap64(word));
    for (int p = 0; p < 8; ++p) dst[p * groups + g] = static_cast<std::uint8_t>(planes >> (8 * (7 - p)));
  }
  std::memcpy(dst + 8 * groups, src + 8 * groups, n - 8 * groups);
}

void bit_unshuffle(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  const std::size_t groups = n / 8;
  for (std::size_t g = 0; g < groups; ++g) {
    std::uint64_t planes = 0;
    for (int p = 0; p < 8; ++p) planes |= static_cast<std::uint64_t>(src[p * groups + g]) << (8 * (7 - p));
    const std::uint64_t word = __builtin_bswap64(transpose8x8(planes));  // the transpose is its own inverse
    std::memcpy(dst + 8 * g, &word, 8);
  }
  std::memcpy(dst + 8 * groups, src + 8 * groups, n - 8 * groups);
}

template <int E>
void byte_shuffle(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  const std::size_t count = n / E;
  for (std::size_t i = 0; i < count; ++i) {
    for (int k = 0; k < E; ++k) dst[k * count + i] = src[i * E + k];
  }
  std::memcpy(dst + E * count, src + E * count, n - E * count);
}

template <int E>
void byte_unshuffle(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  const std::size_t count = n / E;
  for (std::size_t i = 0; i < count; ++i) {
    for (int k = 0; k < E; ++k) dst[i * E + k] = src[k * count + i];
  }
  std::memcpy(dst + E * count, src + E * count, n - E * count);
}

}  // namespace

void shuffle_bytes(std::uint8_t* dst, const std::uint8_t* src, std::size_t n, int elem_bytes) {
  switch (elem_bytes) {
    case 1: return bit_shuffle(dst, src, n);
    case 2: return byte_shuffle<2>(dst, src, n);
    case 4: return byte_shuffle<4>(dst, src, n);
    default: std::memcpy(dst, src, n);
  }
}

void unshuffle_bytes(std::uint8_t* dst, const std::uint8_t* src, std::size_t n, int elem_bytes) {
  switch (elem_bytes) {
    case 1: return bit_unshuffle(dst, src, n);
    case 2: return byte_unshuffle<2>(dst, src, n);
    case 4: return byte_unshuffle<4>(dst, src, n);
    default: std::memcpy(dst, src, n);
  }
}

}  // namespace kvtier
