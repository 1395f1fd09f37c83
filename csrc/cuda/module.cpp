// Python bindings: module kvtier._cuda, built only where nvcc is present (setup.py).
// Plain C ABI at the boundary: raw device addresses, sizes and cudaStream_t handles as ints,
// no torch types, so one build works with any torch.  cudart is linked statically: the module
// imports on a machine without a driver, and then every call reports why CUDA is unusable.
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "paged_copy.h"

namespace py = pybind11;

namespace {

[[noreturn]] void fail(const char* func, cudaError_t err) {
  throw std::runtime_error(std::string(func) + "(): " + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err));
}

std::int64_t nonnegative(std::int64_t value, const char* func, const char* arg) {
  if (value < 0) {
    throw py::value_error(std::string(func) + "(): " + arg + " must be >= 0, got " +
                          std::to_string(value));
  }
  return value;
}

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// (number of devices, "" or why there are none usable).
py::tuple device_status() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // reset the thread's last error so later calls start clean
    return py::make_tuple(0, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
  }
  return py::make_tuple(count, count ? "" : "no CUDA device");
}

void paged_copy(bool gather, std::uintptr_t pages, std::uintptr_t segments,
                std::uintptr_t block_ids, std::int64_t num_pages, std::int64_t blocks_per_page,
                std::int64_t num_segments, std::int64_t chunk_bytes, int vector_bytes, int device,
                std::uintptr_t stream) {
  const char* func = "paged_copy";
  kvtier_cuda::PagedCopyArgs a;
  a.gather = gather;
  a.pages = ptr<const std::int64_t>(pages);
  a.segments = ptr<const std::int64_t>(segments);
  a.block_ids = ptr<const std::int64_t>(block_ids);
  a.num_pages = nonnegative(num_pages, func, "num_pages");
  a.blocks_per_page = nonnegative(blocks_per_page, func, "blocks_per_page");
  a.num_segments = nonnegative(num_segments, func, "num_segments");
  a.chunk_bytes = nonnegative(chunk_bytes, func, "chunk_bytes");
  if (vector_bytes != 1 && vector_bytes != 2 && vector_bytes != 4 && vector_bytes != 8 &&
      vector_bytes != 16) {
    throw py::value_error("paged_copy(): vector_bytes must be 1, 2, 4, 8 or 16, got " +
                          std::to_string(vector_bytes));
  }
  if (a.chunk_bytes % vector_bytes != 0) {
    throw py::value_error("paged_copy(): chunk_bytes must be a multiple of vector_bytes");
  }
  a.vector_bytes = vector_bytes;
  a.device = device;
  a.stream = ptr<CUstream_st>(stream);
  cudaError_t err;
  {
    py::gil_scoped_release nogil;
    err = kvtier_cuda::paged_copy(a);
  }
  if (err != cudaSuccess) fail(func, err);
}

void host_register(std::uintptr_t address, std::size_t nbytes) {
  // Portable: pinned for every device's context, whichever device registered it.
  const cudaError_t err = cudaHostRegister(ptr<void>(address), nbytes, cudaHostRegisterPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail("host_register", err);
  }
}

void host_unregister(std::uintptr_t address) {
  const cudaError_t err = cudaHostUnregister(ptr<void>(address));
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail("host_unregister", err);
  }
}

void memcpy_async(std::uintptr_t dst, std::uintptr_t src, std::size_t nbytes, int device,
                  std::uintptr_t stream) {
  cudaError_t err;
  {
    py::gil_scoped_release nogil;
    err = cudaSetDevice(device);
    if (err == cudaSuccess) {
      err = cudaMemcpyAsync(ptr<void>(dst), ptr<const void>(src), nbytes, cudaMemcpyDefault,
                            ptr<CUstream_st>(stream));
    }
  }
  if (err != cudaSuccess) fail("memcpy_async", err);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "CUDA kernels and runtime calls of kvtier; use them through kvtier.gpu.";
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  m.attr("RUNTIME_VERSION") = runtime;  // e.g. 13000 for CUDA 13.0 (linked statically)
  m.attr("PIECE_BYTES") = kvtier_cuda::kPieceBytes;
  m.def("device_status", &device_status,
        "(number of CUDA devices, '' or why none is usable); never raises.");
  m.def("driver_version", [] {
    int v = 0;
    return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
  }, "The driver's CUDA version (e.g. 12080), 0 without a driver.");
  m.def("paged_copy", &paged_copy, py::arg("gather"), py::arg("pages"), py::arg("segments"),
        py::arg("block_ids"), py::arg("num_pages"), py::arg("blocks_per_page"),
        py::arg("num_segments"), py::arg("chunk_bytes"), py::arg("vector_bytes"),
        py::arg("device"), py::arg("stream"),
        "Enqueue the paged gather (cache -> pages) or scatter on stream: one kernel launch. "
        "pages, segments and block_ids are device addresses of int64 tables (csrc/paged.h).");
  m.def("host_register", &host_register, py::arg("address"), py::arg("nbytes"),
        "cudaHostRegister(address, nbytes, cudaHostRegisterPortable): page-lock host memory.");
  m.def("host_unregister", &host_unregister, py::arg("address"),
        "cudaHostUnregister(address).");
  m.def("memcpy_async", &memcpy_async, py::arg("dst"), py::arg("src"), py::arg("nbytes"),
        py::arg("device"), py::arg("stream"),
        "cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream) on device.");
}
