// Python bindings: module kvtier._native.  Pure-Python twin: kvtier/_fallback.py
// (same signatures, semantics and error messages); kvtier/native.py picks one.
//
// Arguments are taken as py::handle (no pybind11 type conversion; dispatch then
// costs ~35 ns) and buffers are read with raw PyObject_GetBuffer (buffer.h):
// copy() runs once per KV page, so per-call overhead matters.
#include <pybind11/pybind11.h>

#include "buffer.h"
#include "checksum.h"
#include "copy.h"

namespace py = pybind11;

namespace {

// operator.index(obj) as a size, checked to be >= 0 (ValueError otherwise).
std::size_t size_arg(py::handle obj, const char* func, const char* arg) {
  const Py_ssize_t n = PyNumber_AsSsize_t(obj.ptr(), PyExc_OverflowError);
  if (n == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (n < 0) {
    PyErr_Format(PyExc_ValueError, "%s(): %s must be >= 0, got %zd", func, arg, n);
    throw py::error_already_set();
  }
  return static_cast<std::size_t>(n);
}

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

}  // namespace

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
}
