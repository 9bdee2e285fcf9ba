// The CUDA extension's bindings: the same module code as bindings.cpp over the CUDA pipeline.
// (A separate source file so the two extensions never share an object file in the build tree.)
#define EADAPRUNE_WITH_CUDA 1
#include "bindings.cpp"
