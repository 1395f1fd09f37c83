// Python bindings of the batched file I/O (csrc/io.h): io_batch with its
// completion hooks (checksums, copies), the engine and thread settings, and
// raw_io_bench.  Registered into kvtier._native by module.cpp.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "buffer.h"
#include "checksum.h"
#include "io.h"
#include "pyargs.h"

namespace py = pybind11;
using kvtier::sequence_arg;
using kvtier::size_arg;
using kvtier::type_name;

namespace {

// operator.index(obj) as a C int (file descriptors may be negative: the
// syscall then fails with EBADF, reported like any other I/O error).
int fd_arg(py::handle obj, Py_ssize_t i) {
  const auto index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long fd = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (fd == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (overflow != 0 || fd < INT_MIN || fd > INT_MAX) {
    PyErr_Format(PyExc_OverflowError,
                 "io_batch(): fds[%zd] is out of range for a file descriptor, got %S", i,
                 index.ptr());
    throw py::error_already_set();
  }
  return static_cast<int>(fd);
}

std::string io_uring_unavailable() {
  const char* step = nullptr;
  const int err = kvtier::io_uring_error(&step);
  return std::string("io_uring is not available here (") + step + ": " + std::strerror(err) + ")";
}

// KVTIER_IO_ENGINE is applied by the first I/O call, unless set_io_engine()
// came first.  Both run with the GIL held, which also guards the flag.
bool g_io_engine_set = false;

void apply_io_engine_env() {
  if (g_io_engine_set) return;
  const char* raw = std::getenv("KVTIER_IO_ENGINE");
  std::string choice;
  for (const char* c = raw ? raw : ""; *c; ++c) {
    choice += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
  }
  const auto space = " \t\n\r\f\v";
  choice.erase(choice.find_last_not_of(space) + 1);
  choice.erase(0, choice.find_first_not_of(space));
  if (choice.empty()) choice = "auto";
  kvtier::IoEngine engine;
  if (!kvtier::parse_io_engine(choice.c_str(), &engine)) {
    const auto value = py::reinterpret_steal<py::object>(PyUnicode_DecodeFSDefault(raw));
    if (!value) throw py::error_already_set();
    PyErr_Format(PyExc_ValueError,
                 "KVTIER_IO_ENGINE=%R is not valid; use one of: auto, io_uring, threads",
                 value.ptr());
    throw py::error_already_set();
  }
  if (kvtier::set_io_engine(engine) != 0) {
    PyErr_Format(PyExc_RuntimeError, "KVTIER_IO_ENGINE=io_uring, but %s",
                 io_uring_unavailable().c_str());
    throw py::error_already_set();
  }
  g_io_engine_set = true;
}

// What io_batch's completion hook does with a finished op: hash a byte range of
// its transfer, then copy a byte range out of it into another buffer.  It needs
// the iovecs as they were before the transfer consumed them.
struct IoCompletion {
  const kvtier::IoOp* ops;
  const std::vector<iovec>* iov;  // the original iovecs
  const std::vector<std::size_t>* first;
  std::vector<std::size_t> skip, length;  // checksum ranges
  std::vector<char> wanted, valid;
  std::vector<std::uint64_t> value;
  // copy_out: per op, (start in the transfer, destination) pairs, in order
  std::vector<std::vector<std::pair<std::size_t, kvtier::ByteView*>>> copies;

  static void on_done(void* self, std::size_t i) noexcept {
    auto& c = *static_cast<IoCompletion*>(self);
    const std::int64_t moved = c.ops[i].result;
    const iovec* iov = c.iov->data() + (*c.first)[i];
    const std::size_t iovcnt = (*c.first)[i + 1] - (*c.first)[i];
    if (!c.wanted.empty() && c.wanted[i] &&
        moved >= static_cast<std::int64_t>(c.skip[i] + c.length[i])) {
      c.valid[i] = kvtier::checksum_iov(iov, iovcnt, c.skip[i], c.length[i], &c.value[i]);
    }
    if (c.copies.empty()) return;
    for (const auto& [from, to] : c.copies[i]) {
      if (moved < static_cast<std::int64_t>(from + to->size())) continue;
      auto* dst = static_cast<char*>(to->data());
      std::size_t skip = from, left = to->size();
      for (std::size_t k = 0; k < iovcnt && left > 0; ++k) {
        if (skip >= iov[k].iov_len) {
          skip -= iov[k].iov_len;
          continue;
        }
        const std::size_t take = std::min(left, iov[k].iov_len - skip);
        std::memcpy(dst, static_cast<const char*>(iov[k].iov_base) + skip, take);
        dst += take;
        left -= take;
        skip = 0;
      }
    }
  }
};

py::object io_batch(py::handle write_obj, py::handle fds_obj, py::handle offsets_obj,
                    py::handle buffers_obj, py::handle ranges_obj, py::handle copy_obj) {
  apply_io_engine_env();
  const int write = PyObject_IsTrue(write_obj.ptr());
  if (write < 0) throw py::error_already_set();
  const py::tuple fds = sequence_arg(fds_obj, "io_batch", "fds", "int");
  const py::tuple offsets = sequence_arg(offsets_obj, "io_batch", "offsets", "int");
  const py::tuple buffers = sequence_arg(buffers_obj, "io_batch", "buffers", "buffer sequences");
  const Py_ssize_t n = PyTuple_GET_SIZE(fds.ptr());
  if (PyTuple_GET_SIZE(offsets.ptr()) != n || PyTuple_GET_SIZE(buffers.ptr()) != n) {
    PyErr_Format(PyExc_ValueError,
                 "io_batch(): fds, offsets and buffers must have the same length, "
                 "got %zd, %zd and %zd",
                 n, PyTuple_GET_SIZE(offsets.ptr()), PyTuple_GET_SIZE(buffers.ptr()));
    throw py::error_already_set();
  }
  std::vector<kvtier::IoOp> ops(static_cast<std::size_t>(n));
  std::vector<std::size_t> first(ops.size() + 1);  // op i owns iov[first[i] .. first[i + 1])
  std::vector<iovec> iov;
  std::deque<kvtier::ByteView> views;  // released, with the GIL held, when the function exits
  char arg[64];
  for (Py_ssize_t i = 0; i < n; ++i) {
    kvtier::IoOp& op = ops[static_cast<std::size_t>(i)];
    op.fd = fd_arg(PyTuple_GET_ITEM(fds.ptr(), i), i);
    std::snprintf(arg, sizeof arg, "offsets[%zd]", i);
    op.offset = static_cast<std::int64_t>(
        size_arg(PyTuple_GET_ITEM(offsets.ptr(), i), "io_batch", arg));
    std::snprintf(arg, sizeof arg, "buffers[%zd]", i);
    const py::tuple bufs =
        sequence_arg(PyTuple_GET_ITEM(buffers.ptr(), i), "io_batch", arg, "buffers");
    first[static_cast<std::size_t>(i)] = iov.size();
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(bufs.ptr()); ++j) {
      std::snprintf(arg, sizeof arg, "buffers[%zd][%zd]", i, j);
      kvtier::ByteView& view = views.emplace_back();
      // A read fills the buffers: they must be writable.
      if (!view.acquire(PyTuple_GET_ITEM(bufs.ptr(), j), !write, "io_batch", arg)) {
        throw py::error_already_set();
      }
      iov.push_back({view.data(), view.size()});
    }
  }
  first[ops.size()] = iov.size();
  const bool hashing = !ranges_obj.is_none();
  const bool copying = !copy_obj.is_none();
  IoCompletion sums{ops.data(), nullptr, &first, {}, {}, {}, {}, {}, {}};
  std::vector<iovec> original;
  if (hashing) {
    const py::tuple ranges =
        sequence_arg(ranges_obj, "io_batch", "checksum_ranges", "(start, length) pairs or None");
    if (PyTuple_GET_SIZE(ranges.ptr()) != n) {
      PyErr_Format(PyExc_ValueError,
                   "io_batch(): checksum_ranges must have one entry per op, got %zd for %zd ops",
                   PyTuple_GET_SIZE(ranges.ptr()), n);
      throw py::error_already_set();
    }
    const auto count = static_cast<std::size_t>(n);
    sums.skip.assign(count, 0);
    sums.length.assign(count, 0);
    sums.wanted.assign(count, 0);
    sums.valid.assign(count, 0);
    sums.value.assign(count, 0);
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* range = PyTuple_GET_ITEM(ranges.ptr(), i);
      if (range == Py_None) continue;
      std::snprintf(arg, sizeof arg, "checksum_ranges[%zd]", i);
      const py::tuple pair = sequence_arg(range, "io_batch", arg, "int");
      if (PyTuple_GET_SIZE(pair.ptr()) != 2) {
        PyErr_Format(PyExc_ValueError, "io_batch(): %s must be a (start, length) pair", arg);
        throw py::error_already_set();
      }
      const auto k = static_cast<std::size_t>(i);
      sums.skip[k] = size_arg(PyTuple_GET_ITEM(pair.ptr(), 0), "io_batch", arg);
      sums.length[k] = size_arg(PyTuple_GET_ITEM(pair.ptr(), 1), "io_batch", arg);
      sums.wanted[k] = 1;
    }
  }
  if (copying) {
    const py::tuple copies =
        sequence_arg(copy_obj, "io_batch", "copy_out", "sequences of (start, buffer) pairs");
    if (PyTuple_GET_SIZE(copies.ptr()) != n) {
      PyErr_Format(PyExc_ValueError,
                   "io_batch(): copy_out must have one entry per op, got %zd for %zd ops",
                   PyTuple_GET_SIZE(copies.ptr()), n);
      throw py::error_already_set();
    }
    sums.copies.resize(static_cast<std::size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* entry = PyTuple_GET_ITEM(copies.ptr(), i);
      if (entry == Py_None) continue;
      std::snprintf(arg, sizeof arg, "copy_out[%zd]", i);
      const py::tuple pairs = sequence_arg(entry, "io_batch", arg, "(start, buffer) pairs");
      for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(pairs.ptr()); ++j) {
        std::snprintf(arg, sizeof arg, "copy_out[%zd][%zd]", i, j);
        const py::tuple pair =
            sequence_arg(PyTuple_GET_ITEM(pairs.ptr(), j), "io_batch", arg, "(start, buffer)");
        if (PyTuple_GET_SIZE(pair.ptr()) != 2) {
          PyErr_Format(PyExc_ValueError, "io_batch(): %s must be a (start, buffer) pair", arg);
          throw py::error_already_set();
        }
        const std::size_t from = size_arg(PyTuple_GET_ITEM(pair.ptr(), 0), "io_batch", arg);
        kvtier::ByteView& view = views.emplace_back();
        if (!view.acquire(PyTuple_GET_ITEM(pair.ptr(), 1), /*writable=*/true, "io_batch", arg)) {
          throw py::error_already_set();
        }
        sums.copies[static_cast<std::size_t>(i)].emplace_back(from, &view);
      }
    }
  }
  if (hashing || copying) {
    original = iov;  // the transfer advances iov in place
    sums.iov = &original;
  }
  for (std::size_t i = 0; i < ops.size(); ++i) {
    ops[i].iov = iov.data() + first[i];
    ops[i].iovcnt = first[i + 1] - first[i];
  }
  {
    py::gil_scoped_release nogil;
    kvtier::io_run(write != 0, ops.data(), ops.size(),
                   hashing || copying ? &IoCompletion::on_done : nullptr, &sums);  // noexcept
  }
  auto out = py::reinterpret_steal<py::object>(PyList_New(n));
  if (!out) throw py::error_already_set();
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* result = PyLong_FromLongLong(ops[static_cast<std::size_t>(i)].result);
    if (!result) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), i, result);
  }
  if (!hashing) return out;
  auto hashes = py::reinterpret_steal<py::object>(PyList_New(n));
  if (!hashes) throw py::error_already_set();
  for (Py_ssize_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    PyObject* value = sums.valid[k] ? PyLong_FromUnsignedLongLong(sums.value[k]) : Py_NewRef(Py_None);
    if (!value) throw py::error_already_set();
    PyList_SET_ITEM(hashes.ptr(), i, value);
  }
  return py::make_tuple(out, hashes);
}

void set_io_engine(py::handle name_obj) {
  if (!PyUnicode_Check(name_obj.ptr())) {
    PyErr_Format(PyExc_TypeError, "set_io_engine(): name must be a str, got '%s'",
                 type_name(name_obj.ptr()));
    throw py::error_already_set();
  }
  Py_ssize_t size = 0;
  const char* name = PyUnicode_AsUTF8AndSize(name_obj.ptr(), &size);
  if (name == nullptr) throw py::error_already_set();
  kvtier::IoEngine engine;
  const bool has_nul = std::strlen(name) != static_cast<std::size_t>(size);
  if (has_nul || !kvtier::parse_io_engine(name, &engine)) {
    PyErr_Format(PyExc_ValueError,
                 "set_io_engine(): name must be 'auto', 'io_uring' or 'threads', got %R",
                 name_obj.ptr());
    throw py::error_already_set();
  }
  if (kvtier::set_io_engine(engine) != 0) {
    PyErr_Format(PyExc_RuntimeError, "set_io_engine(): %s", io_uring_unavailable().c_str());
    throw py::error_already_set();
  }
  g_io_engine_set = true;
}

// OSError(err, message, filename), as the matching subclass (FileNotFoundError...).
[[noreturn]] void raise_os_error(int err, const std::string& message, PyObject* filename) {
  const auto exc = py::reinterpret_steal<py::object>(
      PyObject_CallFunction(PyExc_OSError, "isO", err, message.c_str(), filename));
  if (exc) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

double raw_io_bench(py::handle path_obj, py::handle page_obj, py::handle batch_obj,
                    py::handle count_obj, py::handle write_obj) {
  apply_io_engine_env();
  const auto path = py::reinterpret_steal<py::object>(PyOS_FSPath(path_obj.ptr()));
  if (!path) throw py::error_already_set();
  PyObject* encoded_ptr = nullptr;  // bytes; ValueError for an embedded NUL
  if (!PyUnicode_FSConverter(path.ptr(), &encoded_ptr)) throw py::error_already_set();
  const auto encoded = py::reinterpret_steal<py::object>(encoded_ptr);
  const std::size_t page_bytes = size_arg(page_obj, "raw_io_bench", "page_bytes");
  const std::size_t batch = size_arg(batch_obj, "raw_io_bench", "batch");
  const std::size_t count = size_arg(count_obj, "raw_io_bench", "count");
  const int write = PyObject_IsTrue(write_obj.ptr());
  if (write < 0) throw py::error_already_set();
  if (page_bytes == 0 || page_bytes % 4096 != 0) {
    PyErr_Format(PyExc_ValueError,
                 "raw_io_bench(): page_bytes must be a positive multiple of 4096, got %zu",
                 page_bytes);
    throw py::error_already_set();
  }
  if (batch == 0) {
    PyErr_SetString(PyExc_ValueError, "raw_io_bench(): batch must be >= 1, got 0");
    throw py::error_already_set();
  }
  if (std::max(batch, count) > static_cast<std::size_t>(PY_SSIZE_T_MAX) / page_bytes) {
    PyErr_SetString(PyExc_OverflowError,
                    "raw_io_bench(): page_bytes * batch and page_bytes * count must not "
                    "exceed sys.maxsize");
    throw py::error_already_set();
  }
  kvtier::RawIoBenchError error;
  double seconds;
  {
    py::gil_scoped_release nogil;
    seconds = kvtier::raw_io_bench(PyBytes_AS_STRING(encoded.ptr()), page_bytes, batch, count,
                                   write != 0, &error);  // noexcept
  }
  if (seconds >= 0) return seconds;
  const char* what = write ? "write" : "read";
  char message[160];
  switch (error.stage) {
    case kvtier::RawIoBenchError::kTransfer:
      std::snprintf(message, sizeof message, "raw_io_bench(): %s at offset %lld failed: %s", what,
                    static_cast<long long>(error.offset), std::strerror(error.err));
      raise_os_error(error.err, message, path.ptr());
    case kvtier::RawIoBenchError::kShort:
      std::snprintf(message, sizeof message,
                    "raw_io_bench(): short %s at offset %lld: %lld of %zu bytes", what,
                    static_cast<long long>(error.offset), static_cast<long long>(error.got),
                    page_bytes);
      raise_os_error(EIO, message, path.ptr());
    case kvtier::RawIoBenchError::kAlloc:
      errno = error.err;
      PyErr_SetFromErrno(PyExc_OSError);
      throw py::error_already_set();
    default:  // kOpen, kTruncate
      errno = error.err;
      PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path.ptr());
      throw py::error_already_set();
  }
}

}  // namespace

void register_io(py::module_& m) {
  m.def("io_batch", &io_batch, py::arg("write"), py::arg("fds"), py::arg("offsets"),
        py::arg("buffers"), py::arg("checksum_ranges") = py::none(),
        py::arg("copy_out") = py::none(),
        "io_batch(write, fds, offsets, buffers, checksum_ranges=None, copy_out=None)\n--\n\n"
        "Run op i as preadv/pwritev(fds[i], buffers[i], offsets[i]), all at once; bytes or "
        "-errno.  With checksum_ranges (per op a (start, length) pair or None), returns "
        "(results, checksums): XXH3-64 of bytes [start, start + length) of op i's transfer, "
        "hashed as op i completes, or None where not asked or not all moved.  With copy_out "
        "(per op a sequence of (start, buffer) pairs, or None), bytes [start, start + "
        "len(buffer)) of op i's transfer are copied into each buffer as op i completes "
        "(after its checksum), where it moved that many.");
  m.def(
      "io_engine",
      [] {
        apply_io_engine_env();
        return kvtier::io_engine_name(kvtier::io_engine());
      },
      "io_engine()\n--\n\n"
      "The engine io_batch uses now: 'io_uring' or 'threads'.");
  m.def("set_io_engine", &set_io_engine, py::arg("name"),
        "set_io_engine(name)\n--\n\n"
        "Make io_batch use 'io_uring', 'threads' or 'auto' (io_uring where it works).");
  m.def(
      "set_io_threads",
      [](py::handle n) { kvtier::set_io_threads(size_arg(n, "set_io_threads", "n")); },
      py::arg("n"),
      "set_io_threads(n)\n--\n\n"
      "Run threads-engine batches on n threads (caller included); 0 restores the default.");
  m.def(
      "io_threads", [] { return kvtier::io_threads(); },
      "io_threads()\n--\n\n"
      "Number of threads (caller included) that share a threads-engine batch.");
  m.def("raw_io_bench", &raw_io_bench, py::arg("path"), py::arg("page_bytes"), py::arg("batch"),
        py::arg("count"), py::arg("write"),
        "raw_io_bench(path, page_bytes, batch, count, write)\n--\n\n"
        "Seconds to move count pages of page_bytes to/from path, batch per io_batch (O_DIRECT).");
}
