#include "pyargs.h"

#include <cstring>

namespace py = pybind11;

namespace kvtier {

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

// type(obj).__name__, as the Python fallback reports it.
const char* type_name(PyObject* obj) {
  const char* full = Py_TYPE(obj)->tp_name;  // "numpy.ndarray" for static types
  const char* dot = std::strrchr(full, '.');
  return dot ? dot + 1 : full;
}

// tuple(obj): a snapshot that Python code run meanwhile (__index__, buffer
// exports) cannot change.  Buffer objects are refused (a common slip:
// buffers=[page] instead of [[page]]).
py::tuple sequence_arg(py::handle obj, const char* func, const char* arg, const char* of) {
  PyObject* tuple = PyObject_CheckBuffer(obj.ptr()) ? nullptr : PySequence_Tuple(obj.ptr());
  if (tuple == nullptr) {
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_TypeError)) throw py::error_already_set();
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "%s(): %s must be a sequence of %s, got '%s'", func, arg, of,
                 type_name(obj.ptr()));
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::tuple>(tuple);
}

}  // namespace kvtier
