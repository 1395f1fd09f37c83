#include "buffer.h"

#include <cstring>

namespace kvtier {
namespace {

// type(obj).__name__, as the Python fallback reports it.
const char* type_name(PyObject* obj) {
  const char* full = Py_TYPE(obj)->tp_name;  // "numpy.ndarray" for static types
  const char* dot = std::strrchr(full, '.');
  return dot ? dot + 1 : full;
}

// Replaces the exception of a failed PyObject_GetBuffer with a clearer one.
void diagnose(PyObject* obj, bool writable, const char* func, const char* arg) {
  if (!PyObject_CheckBuffer(obj)) {
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError,
                 "%s(): %s must be a bytes-like object (buffer protocol), got '%s'", func, arg,
                 type_name(obj));
    return;
  }
  // Keep the exporter's error in case the probes below do not explain the failure.
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  Py_buffer probe;
  const char* verdict = nullptr;
  if (PyObject_GetBuffer(obj, &probe, PyBUF_STRIDES) == 0) {
    // Readable with strides: either strided, or contiguous but read-only.
    if (!PyBuffer_IsContiguous(&probe, 'C')) {
      verdict = "contiguity";
    } else if (writable && probe.readonly) {
      verdict = "readonly";
    }
    PyBuffer_Release(&probe);
  }
  PyErr_Clear();
  if (verdict == nullptr) {
    PyErr_Restore(type, value, traceback);
    return;
  }
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(traceback);
  if (verdict[0] == 'c') {
    PyErr_Format(PyExc_ValueError, "%s(): %s is not C-contiguous", func, arg);
  } else {
    PyErr_Format(PyExc_TypeError,
                 "%s(): %s is read-only; a writable buffer is required (got '%s')", func, arg,
                 type_name(obj));
  }
}

}  // namespace

bool ByteView::acquire(PyObject* obj, bool writable, const char* func, const char* arg) {
  release();
  if (PyObject_GetBuffer(obj, &view_, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) == 0) {
    held_ = true;
    return true;
  }
  diagnose(obj, writable, func, arg);
  return false;
}

}  // namespace kvtier
