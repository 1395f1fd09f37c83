// Argument checks shared by the binding files (module.cpp, module_io.cpp):
// the errors and messages kvtier/_fallback_args.py reproduces.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>

namespace kvtier {

// operator.index(obj) as a size, checked to be >= 0 (ValueError otherwise).
std::size_t size_arg(pybind11::handle obj, const char* func, const char* arg);

// type(obj).__name__, as the Python fallback reports it.
const char* type_name(PyObject* obj);

// tuple(obj), refusing buffer objects (TypeError naming func, arg and what it must hold).
pybind11::tuple sequence_arg(pybind11::handle obj, const char* func, const char* arg, const char* of);

}  // namespace kvtier
