// The numerical constants of the pipeline that the C++ backends (CPU and CUDA) share with Python.
//
// kEnergySlack and kFlatRtol are part of the contract every backend computes (the Python contract
// defines them: eadaprune_kernels/contract.py ENERGY_SLACK, FLAT_RTOL); tests/test_native_constants.py
// reads this header and fails when a value here and its Python counterpart differ. The others are
// shared by csrc/cpu and csrc/cuda so that both native backends run the same arithmetic.
#pragma once

#include <cstdint>

namespace eadaprune {

// The budget threshold is (energy - kEnergySlack) * E (contract.ENERGY_SLACK).
constexpr double kEnergySlack = 1e-5;
// An image whose centred energy is at most kFlatRtol * ||X||_F^2 is flat (contract.FLAT_RTOL).
constexpr double kFlatRtol = 1e-10;

constexpr double kEps64 = 2.220446049250313e-16;

// Offsets of the generated sketch are int32: D * l <= 2**31 - 1 (sketch.MAX_SKETCH_ELEMENTS).
constexpr int64_t kMaxSketchElements = 2147483647LL;

// Relative shift of the float64 Cholesky factorisations: s = kCholeskyShiftRel * (l + 16) * trace(G).
// It exceeds the rounding error of a float64 Cholesky of an l x l PSD matrix (~ l * eps64 * ||G||), so
// the factorisation never breaks down (rank-deficient Y, exact zeros), and it perturbs eigenvalues by
// at most ~1e-15 * l * trace, i.e. singular values by ~3e-7 * ||X_c||_F: far below float32 noise.
constexpr double kCholeskyShiftRel = 1e-15;

// One-sided Jacobi on the rows of the l x l Cholesky factor stops when every pair of rows is
// orthogonal to |r_p . r_q| <= kJacobiTol * |r_p| |r_q| (or after kJacobiMaxSweeps sweeps). Rows
// orthogonal to 1e-10 give eigenvalues to ~1e-20 relative (the error is quadratic in the
// off-diagonal) and eigenvectors to ~1e-10 / relative gap: far below the float32 data they come from.
// The same tolerance on both native backends, so that they stop at the same accuracy.
constexpr double kJacobiTol = 1e-10;
constexpr int kJacobiMaxSweeps = 60;

}  // namespace eadaprune
