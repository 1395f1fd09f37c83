// Python bindings: module kvtier._native.  Pure-Python twin: kvtier/_fallback.py
// (same signatures, semantics and error messages); kvtier/native.py picks one.
//
// Arguments are taken as py::handle (no pybind11 type conversion; dispatch then
// costs ~35 ns) and buffers are read with raw PyObject_GetBuffer (buffer.h):
// copy() runs once per KV page, so per-call overhead matters.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "buffer.h"
#include "checksum.h"
#include "copy.h"
#include "io.h"
#include "paged.h"
#include "pyargs.h"
#include "shuffle.h"

namespace py = pybind11;
using kvtier::size_arg;

namespace {

void copy(py::handle dst_obj, py::handle src_obj) {
  kvtier::ByteView dst, src;  // released, with the GIL held, when the function exits
  if (!dst.acquire(dst_obj.ptr(), /*writable=*/true, "copy", "dst")) throw py::error_already_set();
  if (!src.acquire(src_obj.ptr(), /*writable=*/false, "copy", "src")) throw py::error_already_set();
  const std::size_t n = dst.size();
  if (n != src.size()) {
    PyErr_Format(PyExc_ValueError, "copy(): size mismatch: dst has %zu bytes, src has %zu bytes",
                 n, src.size());
    throw py::error_already_set();
  }
  if (n < kvtier::kReleaseGilBytes) return kvtier::copy_bytes(dst.data(), src.data(), n);
  py::gil_scoped_release nogil;
  kvtier::copy_bytes(dst.data(), src.data(), n);  // noexcept
}

std::uint64_t checksum(py::handle obj) {
  kvtier::ByteView data;
  if (!data.acquire(obj.ptr(), /*writable=*/false, "checksum", "data")) throw py::error_already_set();
  if (data.size() < kvtier::kReleaseGilBytes) return kvtier::checksum_bytes(data.data(), data.size());
  py::gil_scoped_release nogil;
  return kvtier::checksum_bytes(data.data(), data.size());
}

py::object alloc_bytearray(py::handle n) {
  const std::size_t size = size_arg(n, "alloc_bytearray", "n");
  // Growing an empty bytearray allocates exactly size + 1 bytes and leaves them
  // uninitialised (no zero-fill pass), like PyByteArray_FromStringAndSize(NULL,
  // size), whose out-of-memory path reads an uninitialised export count on
  // CPython 3.11 and prints a spurious "SystemError: ... has exported buffers".
  auto out = py::reinterpret_steal<py::object>(PyByteArray_FromStringAndSize(nullptr, 0));
  if (!out || (size > 0 && PyByteArray_Resize(out.ptr(), static_cast<Py_ssize_t>(size)) != 0)) {
    throw py::error_already_set();
  }
  return out;
}

py::object address(py::handle obj) {
  kvtier::ByteView buf;
  if (!buf.acquire(obj.ptr(), /*writable=*/false, "address", "buf")) throw py::error_already_set();
  // Valid only while the exporter keeps that memory where it is (e.g. a
  // bytearray that is not resized).
  return py::reinterpret_steal<py::object>(PyLong_FromVoidPtr(buf.data()));
}

// --- batched file I/O (io.h) ---------------------------------------------------------


// shuffle()/unshuffle(): the byte-plane filter of the shuffle-zstd codec (shuffle.h).
void shuffle_call(py::handle dst_obj, py::handle src_obj, py::handle elem_obj, bool forward) {
  const char* func = forward ? "shuffle" : "unshuffle";
  kvtier::ByteView dst, src;
  if (!dst.acquire(dst_obj.ptr(), /*writable=*/true, func, "dst")) throw py::error_already_set();
  if (!src.acquire(src_obj.ptr(), /*writable=*/false, func, "src")) throw py::error_already_set();
  const std::size_t elem = size_arg(elem_obj, func, "element_bytes");
  if (elem != 1 && elem != 2 && elem != 4) {
    PyErr_Format(PyExc_ValueError, "%s(): element_bytes must be 1, 2 or 4, got %zu", func, elem);
    throw py::error_already_set();
  }
  const std::size_t n = dst.size();
  if (n != src.size()) {
    PyErr_Format(PyExc_ValueError, "%s(): size mismatch: dst has %zu bytes, src has %zu bytes",
                 func, n, src.size());
    throw py::error_already_set();
  }
  auto* out = static_cast<std::uint8_t*>(dst.data());
  const auto* in = static_cast<const std::uint8_t*>(src.data());
  if (out < in + n && in < out + n && n > 0) {
    PyErr_Format(PyExc_ValueError, "%s(): dst and src overlap", func);
    throw py::error_already_set();
  }
  py::gil_scoped_release nogil;
  if (forward) {
    kvtier::shuffle_bytes(out, in, n, static_cast<int>(elem));
  } else {
    kvtier::unshuffle_bytes(out, in, n, static_cast<int>(elem));
  }
}

// operator.index(obj) as an address (an int in [0, 2**64)).
std::uintptr_t address_arg(py::handle obj, const char* func, const char* arg) {
  const auto index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();
  const unsigned long long value = PyLong_AsUnsignedLongLong(index.ptr());
  if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s(): %s must be an address in [0, 2**64), got %S", func,
                 arg, index.ptr());
    throw py::error_already_set();
  }
  return static_cast<std::uintptr_t>(value);
}

// paged_copy(): the CPU reference of the paged gather/scatter kernels (paged.h).
void paged_copy_call(py::handle gather_obj, py::handle pages, py::handle segments,
                     py::handle block_ids, py::handle num_pages, py::handle blocks_per_page,
                     py::handle num_segments, py::handle chunk_bytes) {
  const char* func = "paged_copy";
  const int gather = PyObject_IsTrue(gather_obj.ptr());
  if (gather < 0) throw py::error_already_set();
  kvtier::PagedCopy op;
  op.gather = gather != 0;
  op.pages = reinterpret_cast<const std::int64_t*>(address_arg(pages, func, "pages"));
  op.segments = reinterpret_cast<const std::int64_t*>(address_arg(segments, func, "segments"));
  op.block_ids = reinterpret_cast<const std::int64_t*>(address_arg(block_ids, func, "block_ids"));
  op.num_pages = size_arg(num_pages, func, "num_pages");
  op.blocks_per_page = size_arg(blocks_per_page, func, "blocks_per_page");
  op.num_segments = size_arg(num_segments, func, "num_segments");
  op.chunk_bytes = size_arg(chunk_bytes, func, "chunk_bytes");
  const std::size_t chunks = op.num_pages * op.blocks_per_page * op.num_segments;
  if (chunks == 0 || op.chunk_bytes == 0) return;
  if (chunks * op.chunk_bytes < kvtier::kReleaseGilBytes) return kvtier::paged_copy(op);
  py::gil_scoped_release nogil;
  kvtier::paged_copy(op);  // noexcept
}

}  // namespace

void register_io(py::module_& m);  // module_io.cpp

PYBIND11_MODULE(_native, m) {
  // Each docstring starts with CPython's "name(args)\n--\n\n" header instead of
  // pybind11's generated signature: inspect.signature() then works and __doc__
  // is the one-line summary, as for the Python fallback.
  py::options options;
  options.disable_function_signatures();
  m.doc() = "Native (C++) byte helpers of kvtier; use them through kvtier.native.";

  m.def("copy", &copy, py::arg("dst"), py::arg("src"),
        "copy(dst, src)\n--\n\n"
        "Copy the bytes of buffer src into the writable buffer dst of the same size.");
  m.def("checksum", &checksum, py::arg("data"),
        "checksum(data)\n--\n\n"
        "XXH3-64 (seed 0) of the buffer's bytes, as xxhash.xxh3_64_intdigest.");
  m.def(
      "checksum_isa", [] { return std::string(kvtier::checksum_isa()); },
      "checksum_isa()\n--\n\n"
      "The vector code checksum() runs: 'avx2' where the CPU has it, else 'baseline'.");
  m.def("alloc_bytearray", &alloc_bytearray, py::arg("n"),
        "alloc_bytearray(n)\n--\n\n"
        "A bytearray of n bytes whose contents are not initialised.");
  m.def("address", &address, py::arg("buf"),
        "address(buf)\n--\n\n"
        "Address of the first byte of the C-contiguous buffer buf.");
  m.def(
      "set_copy_threads",
      [](py::handle n) { kvtier::set_copy_threads(size_arg(n, "set_copy_threads", "n")); },
      py::arg("n"),
      "set_copy_threads(n)\n--\n\n"
      "Use n threads (caller included) for large copies; 0 restores the default.");
  m.def(
      "copy_threads", [] { return kvtier::copy_threads(); },
      "copy_threads()\n--\n\n"
      "Number of threads (caller included) that share a large copy.");
  m.def(
      "set_copy_threshold",
      [](py::handle nbytes) {
        kvtier::set_copy_threshold(size_arg(nbytes, "set_copy_threshold", "nbytes"));
      },
      py::arg("nbytes"),
      "set_copy_threshold(nbytes)\n--\n\n"
      "Split copies of at least nbytes bytes across the copy threads.");
  m.def(
      "copy_threshold", [] { return kvtier::copy_threshold(); },
      "copy_threshold()\n--\n\n"
      "Size in bytes from which a copy is split across the copy threads.");

  register_io(m);  // batched file I/O for the disk tier (module_io.cpp)

  // Paged gather/scatter, CPU reference of csrc/cuda/paged_copy.cu (csrc/paged.h).
  m.def("paged_copy", &paged_copy_call, py::arg("gather"), py::arg("pages"), py::arg("segments"),
        py::arg("block_ids"), py::arg("num_pages"), py::arg("blocks_per_page"),
        py::arg("num_segments"), py::arg("chunk_bytes"),
        "paged_copy(gather, pages, segments, block_ids, num_pages, blocks_per_page, "
        "num_segments, chunk_bytes)\n--\n\n"
        "Gather engine blocks into pages (or scatter back) from int64 tables at host addresses.");

  // Codec filter (csrc/shuffle.h).
  m.def(
      "shuffle",
      [](py::handle dst, py::handle src, py::handle elem) { shuffle_call(dst, src, elem, true); },
      py::arg("dst"), py::arg("src"), py::arg("element_bytes"),
      "shuffle(dst, src, element_bytes)\n--\n\n"
      "Split src into byte planes (bit planes for 1-byte elements) in dst, tail unchanged.");
  m.def(
      "unshuffle",
      [](py::handle dst, py::handle src, py::handle elem) { shuffle_call(dst, src, elem, false); },
      py::arg("dst"), py::arg("src"), py::arg("element_bytes"),
      "unshuffle(dst, src, element_bytes)\n--\n\n"
      "Reassemble elements from the byte planes (bit planes for 1-byte elements) of src.");
}
