// Raw-buffer access for the kvtier native helpers.
//
// ByteView wraps PyObject_GetBuffer with PyBUF_SIMPLE / PyBUF_WRITABLE: the
// cheapest request there is (no format, shape or strides are filled in), and
// one that exporters refuse unless the memory is C-contiguous.  When a request
// fails, the failure is re-diagnosed so every backend raises the same clear
// errors (kvtier/_fallback.py mirrors these messages word for word):
//
//   TypeError  "<func>(): <arg> must be a bytes-like object (buffer protocol), got '<type>'"
//   ValueError "<func>(): <arg> is not C-contiguous"
//   TypeError  "<func>(): <arg> is read-only; a writable buffer is required (got '<type>')"
//
// Anything else (e.g. a closed mmap) keeps the exporter's own exception.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstddef>

namespace kvtier {

class ByteView {
 public:
  ByteView() = default;
  ~ByteView() { release(); }
  ByteView(const ByteView&) = delete;
  ByteView& operator=(const ByteView&) = delete;

  // Acquires obj's bytes.  Returns false with a Python exception set on failure.
  // Needs the GIL; so does the destructor (declare views outside GIL-free scopes).
  bool acquire(PyObject* obj, bool writable, const char* func, const char* arg);

  void release() {
    if (held_) {
      PyBuffer_Release(&view_);
      held_ = false;
    }
  }

  void* data() const { return view_.buf; }
  std::size_t size() const { return static_cast<std::size_t>(view_.len); }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

// Copies below this size keep the GIL: a plain memcpy of 64 KiB takes a few
// microseconds, less than handing the GIL to another thread and back can cost.
constexpr std::size_t kReleaseGilBytes = std::size_t{64} << 10;

}  // namespace kvtier
