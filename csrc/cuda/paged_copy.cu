// Paged gather/scatter kernels: engine blocks <-> contiguous kvtier pages, one launch per
// batch.  Same tables and page layout as the CPU reference (csrc/paged.h), byte for byte:
//
//   segment s, engine block b:  chunk_bytes at segments[2s] + b * segments[2s + 1]
//   page p, segment s, slot j:  chunk_bytes at pages[p] + (s * blocks_per_page + j) * chunk_bytes
//   block of (p, j):            block_ids[p * blocks_per_page + j]
//
// All three tables are int64 arrays in device memory.  Work is split into pieces of at most
// kPieceBytes of one chunk (a 4 MiB SGLang page_first chunk is many pieces, a 2 KiB chunk
// one), and CTAs stride over the pieces, so small and large chunks both fill the GPU.  Each
// thread moves VEC-byte words (16 when every address, stride and size allows, which the
// caller computes), kUnroll words in flight per thread.
#include "paged_copy.h"

#include <cstdint>

namespace kvtier_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <int VEC>
struct Word;
template <>
struct Word<16> { using type = uint4; };
template <>
struct Word<8> { using type = uint2; };
template <>
struct Word<4> { using type = unsigned int; };
template <>
struct Word<2> { using type = unsigned short; };
template <>
struct Word<1> { using type = unsigned char; };

template <int VEC>
__global__ void __launch_bounds__(kThreads)
paged_copy_kernel(bool gather, const std::int64_t* __restrict__ pages,
                  const std::int64_t* __restrict__ segments,
                  const std::int64_t* __restrict__ block_ids, std::int64_t blocks_per_page,
                  std::int64_t num_segments, std::int64_t chunk_bytes, std::int64_t piece_bytes,
                  std::int64_t pieces_per_chunk, std::int64_t num_pieces) {
  using W = typename Word<VEC>::type;
  const std::int64_t chunks_per_page = num_segments * blocks_per_page;
  for (std::int64_t item = blockIdx.x; item < num_pieces; item += gridDim.x) {
    const std::int64_t chunk = item / pieces_per_chunk;
    const std::int64_t piece = item - chunk * pieces_per_chunk;
    const std::int64_t p = chunk / chunks_per_page;
    const std::int64_t in_page = chunk - p * chunks_per_page;  // s * blocks_per_page + j
    const std::int64_t s = in_page / blocks_per_page;
    const std::int64_t j = in_page - s * blocks_per_page;
    const std::int64_t block = block_ids[p * blocks_per_page + j];
    const std::int64_t offset = piece * piece_bytes;
    const std::int64_t len = min(piece_bytes, chunk_bytes - offset);
    char* page = reinterpret_cast<char*>(pages[p]) + in_page * chunk_bytes + offset;
    char* cache = reinterpret_cast<char*>(segments[2 * s]) + block * segments[2 * s + 1] + offset;
    const W* src = reinterpret_cast<const W*>(gather ? cache : page);
    W* dst = reinterpret_cast<W*>(gather ? page : cache);
    const std::int64_t words = len / VEC;
    std::int64_t i = threadIdx.x;
    for (; i + (kUnroll - 1) * kThreads < words; i += kUnroll * kThreads) {
      W buf[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) buf[u] = src[i + u * kThreads];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) dst[i + u * kThreads] = buf[u];
    }
    for (; i < words; i += kThreads) dst[i] = src[i];
  }
}

template <int VEC>
cudaError_t launch(const PagedCopyArgs& a, int grid, std::int64_t piece_bytes,
                   std::int64_t pieces_per_chunk, std::int64_t num_pieces) {
  paged_copy_kernel<VEC><<<grid, kThreads, 0, a.stream>>>(
      a.gather, a.pages, a.segments, a.block_ids, a.blocks_per_page, a.num_segments,
      a.chunk_bytes, piece_bytes, pieces_per_chunk, num_pieces);
  return cudaGetLastError();
}

}  // namespace

cudaError_t paged_copy(const PagedCopyArgs& a) {
  const std::int64_t chunks = a.num_pages * a.num_segments * a.blocks_per_page;
  if (chunks == 0 || a.chunk_bytes == 0) return cudaSuccess;
  // A piece is what one CTA moves in one step: at most 16 KiB, a multiple of the word size.
  const std::int64_t piece_bytes = a.chunk_bytes < kPieceBytes ? a.chunk_bytes : kPieceBytes;
  const std::int64_t pieces_per_chunk = (a.chunk_bytes + piece_bytes - 1) / piece_bytes;
  const std::int64_t num_pieces = chunks * pieces_per_chunk;
  int sms = 0;
  cudaError_t err = cudaSetDevice(a.device);  // the launch goes to the current device
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.device);
  if (err != cudaSuccess) return err;
  const std::int64_t most = static_cast<std::int64_t>(sms) * 8;  // 8 CTAs of 256 per SM
  const int grid = static_cast<int>(num_pieces < most ? num_pieces : most);
  switch (a.vector_bytes) {
    case 16: return launch<16>(a, grid, piece_bytes, pieces_per_chunk, num_pieces);
    case 8: return launch<8>(a, grid, piece_bytes, pieces_per_chunk, num_pieces);
    case 4: return launch<4>(a, grid, piece_bytes, pieces_per_chunk, num_pieces);
    case 2: return launch<2>(a, grid, piece_bytes, pieces_per_chunk, num_pieces);
    case 1: return launch<1>(a, grid, piece_bytes, pieces_per_chunk, num_pieces);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kvtier_cuda
