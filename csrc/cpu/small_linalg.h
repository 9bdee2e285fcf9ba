// Small dense kernels on one image's l x l matrices (row-major, float64), for the CPU backend.
// Used from one translation unit only (static functions, one clone per instruction set).
//
// * shifted_cholesky_upper, upper_triangular_inverse: R (upper) with R^T R = G + s I and R^{-1},
//   the orthonormalisation step of CholeskyQR (Q = Y R^{-1}).
// * gram_eigh: the eigen-decomposition of the l x l Gram G = B B^T by a Jacobi method: pivoted
//   Cholesky P^T (G + s I) P = R^T R, then one-sided (Hestenes) Jacobi on the rows of R
//   ("preconditioned Jacobi", Drmac & Veselic 2008). With M = P R^T (its columns are the rows of R,
//   un-permuted), M M^T = G + s I; one-sided Jacobi rotates the columns of M until they are
//   orthogonal, M V = U S, so G = U (S^2 - s I) U^T: the normalised rotated rows are the
//   eigenvectors and their squared norms minus s the eigenvalues. No rotation has to be
//   accumulated, the pivoting makes R graded so few sweeps are needed, and the eigenvalues carry
//   relative accuracy of the order of the stopping tolerance.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "../common/numerics.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(EADAPRUNE_NO_CLONES)
// One compiled copy per instruction set, chosen at load time: AVX-512 where the CPU has it.
#define EADAPRUNE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EADAPRUNE_SIMD_CLONES
#endif

namespace eadaprune {
namespace cpu {

// kEps64, kCholeskyShiftRel, kJacobiTol, kJacobiMaxSweeps: csrc/common/numerics.h (shared with CUDA).

inline double trace(const double* g, int64_t l) {
  double t = 0.0;
  for (int64_t i = 0; i < l; ++i) t += g[i * l + i];
  return t;
}

// In place: a (l x l, symmetric, row-major) -> upper R with R^T R = a + s I; strictly lower part
// zeroed. Returns false (and writes the identity) when trace(a) == 0, i.e. Y == 0.
EADAPRUNE_SIMD_CLONES
static bool shifted_cholesky_upper(double* a, int64_t l) {
  const double tr = trace(a, l);
  if (!(tr > 0.0)) {
    for (int64_t i = 0; i < l * l; ++i) a[i] = 0.0;
    for (int64_t i = 0; i < l; ++i) a[i * l + i] = 1.0;
    return false;
  }
  const double s = kCholeskyShiftRel * static_cast<double>(l + 16) * tr;
  for (int64_t i = 0; i < l; ++i) a[i * l + i] += s;
  for (int64_t k = 0; k < l; ++k) {
    double* rk = a + k * l;
    const double pivot = std::max(rk[k], s);  // Schur complements of G + sI are >= s in exact arithmetic
    const double r = std::sqrt(pivot);
    const double inv = 1.0 / r;
    rk[k] = r;
    for (int64_t j = k + 1; j < l; ++j) rk[j] *= inv;
    for (int64_t i = k + 1; i < l; ++i) {  // trailing update of the upper triangle, row by row
      const double f = rk[i];
      double* ri = a + i * l;
#pragma omp simd
      for (int64_t j = i; j < l; ++j) ri[j] -= f * rk[j];
    }
  }
  for (int64_t i = 1; i < l; ++i)
    for (int64_t j = 0; j < i; ++j) a[i * l + j] = 0.0;
  return true;
}

// x = r^{-1} for an upper-triangular r (l x l, row-major, non-zero diagonal); x is upper triangular.
// Row i of x is (e_i - sum_{k>i} r_ik x_k) / r_ii, built from the rows below it (contiguous axpys).
EADAPRUNE_SIMD_CLONES
static void upper_triangular_inverse(const double* r, double* x, int64_t l) {
  for (int64_t i = l - 1; i >= 0; --i) {
    double* xi = x + i * l;
    for (int64_t j = 0; j < l; ++j) xi[j] = 0.0;
    xi[i] = 1.0;
    for (int64_t k = i + 1; k < l; ++k) {
      const double f = r[i * l + k];
      const double* xk = x + k * l;
#pragma omp simd
      for (int64_t j = k; j < l; ++j) xi[j] -= f * xk[j];
    }
    const double inv = 1.0 / r[i * l + i];
#pragma omp simd
    for (int64_t j = i; j < l; ++j) xi[j] *= inv;
  }
}

// Pivoted shifted Cholesky of the full symmetric a (l x l): afterwards the rows of a hold R with
// R^T R = P^T (a + s I) P, perm[k] = original index of position k. Returns s.
EADAPRUNE_SIMD_CLONES
static double pivoted_shifted_cholesky(double* a, int64_t l, double s, int64_t* perm) {
  for (int64_t i = 0; i < l; ++i) {
    a[i * l + i] += s;
    perm[i] = i;
  }
  for (int64_t k = 0; k < l; ++k) {
    int64_t p = k;
    for (int64_t i = k + 1; i < l; ++i)
      if (a[i * l + i] > a[p * l + p]) p = i;
    if (p != k) {
      for (int64_t j = 0; j < l; ++j) std::swap(a[k * l + j], a[p * l + j]);  // rows
      for (int64_t i = 0; i < l; ++i) std::swap(a[i * l + k], a[i * l + p]);  // columns
      std::swap(perm[k], perm[p]);
    }
    double* rk = a + k * l;
    const double r = std::sqrt(std::max(rk[k], s));
    const double inv = 1.0 / r;
    rk[k] = r;
    for (int64_t j = k + 1; j < l; ++j) rk[j] *= inv;
    for (int64_t i = k + 1; i < l; ++i) {  // full trailing update (both triangles: pivoting swaps both)
      const double f = rk[i];
      double* ri = a + i * l;
#pragma omp simd
      for (int64_t j = k + 1; j < l; ++j) ri[j] -= f * rk[j];
    }
  }
  for (int64_t i = 1; i < l; ++i)
    for (int64_t j = 0; j < i; ++j) a[i * l + j] = 0.0;
  return s;
}

inline double dot(const double* x, const double* y, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] * y[i];
  return acc;
}

inline void rotate(double* x, double* y, int64_t n, double c, double s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[i], yi = y[i];
    x[i] = c * xi - s * yi;
    y[i] = s * xi + c * yi;
  }
}

// One-sided cyclic Jacobi on the rows of r (l x l, row-major): rotates pairs of rows until every
// pair is orthogonal to |r_p . r_q| <= tol * |r_p| |r_q|. Returns the number of sweeps.
EADAPRUNE_SIMD_CLONES
static int one_sided_jacobi_rows(double* r, int64_t l, int max_sweeps = kJacobiMaxSweeps) {
  const double tol = std::max(kJacobiTol, 4.0 * static_cast<double>(l) * kEps64);
  std::vector<double> norm2(l);
  for (int sweep = 1; sweep <= max_sweeps; ++sweep) {
    for (int64_t i = 0; i < l; ++i) norm2[i] = dot(r + i * l, r + i * l, l);
    bool rotated = false;
    for (int64_t p = 0; p + 1 < l; ++p) {
      for (int64_t q = p + 1; q < l; ++q) {
        const double alpha = norm2[p], beta = norm2[q];
        if (alpha == 0.0 || beta == 0.0) continue;
        const double gamma = dot(r + p * l, r + q * l, l);
        if (std::abs(gamma) <= tol * std::sqrt(alpha) * std::sqrt(beta)) continue;
        // Symmetric Schur decomposition of [[alpha, gamma], [gamma, beta]] (Golub & Van Loan 8.5.1).
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = (zeta >= 0.0 ? 1.0 : -1.0) / (std::abs(zeta) + std::sqrt(1.0 + zeta * zeta));
        const double c = 1.0 / std::sqrt(1.0 + t * t);
        rotate(r + p * l, r + q * l, l, c, c * t);
        norm2[p] = alpha - t * gamma;
        norm2[q] = beta + t * gamma;
        rotated = true;
      }
    }
    if (!rotated) return sweep;
  }
  return max_sweeps;
}

// Eigen-decomposition of the symmetric PSD g (l x l, row-major, destroyed) by pivoted Cholesky and
// one-sided Jacobi (see the file comment). Writes the eigenvalues, descending and clamped at 0, to
// lambda[l], and when vectors != nullptr the matching unit eigenvectors as its columns
// (vectors[i * l + j] = component i of eigenvector j). A zero matrix gives zeros and the identity.
inline void gram_eigh(double* g, int64_t l, double* lambda, double* vectors) {
  const double tr = trace(g, l);
  if (!(tr > 0.0)) {
    for (int64_t j = 0; j < l; ++j) lambda[j] = 0.0;
    if (vectors != nullptr)
      for (int64_t i = 0; i < l; ++i)
        for (int64_t j = 0; j < l; ++j) vectors[i * l + j] = i == j ? 1.0 : 0.0;
    return;
  }
  std::vector<int64_t> perm(l);
  const double s = pivoted_shifted_cholesky(g, l, kCholeskyShiftRel * static_cast<double>(l + 16) * tr, perm.data());
  one_sided_jacobi_rows(g, l);
  std::vector<double> norm2(l);
  for (int64_t j = 0; j < l; ++j) norm2[j] = dot(g + j * l, g + j * l, l);
  std::vector<int64_t> order(l);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return norm2[a] > norm2[b]; });
  for (int64_t j = 0; j < l; ++j) lambda[j] = std::max(norm2[order[j]] - s, 0.0);
  if (vectors == nullptr) return;
  for (int64_t j = 0; j < l; ++j) {
    const double* row = g + order[j] * l;
    const double inv = 1.0 / std::sqrt(norm2[order[j]]);
    for (int64_t a = 0; a < l; ++a) vectors[perm[a] * l + j] = row[a] * inv;
  }
}

}  // namespace cpu
}  // namespace eadaprune
