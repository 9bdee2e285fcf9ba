// The native CUDA backend of eadaprune_kernels: the pipeline of backends/reference.py for CUDA tensors.
//
// Same algorithm as the CPU backend (csrc/cpu/pipeline_cpu.cpp, whose file comment gives the
// numerical reasoning): a scaled, centred float32 working copy (float64 for float64 inputs);
// Y = X_c Omega and the power iterations as cuBLAS GEMMs through ATen; CholeskyQR with a float64
// Gram (one pass for intermediate bases, two for the last); the l x l Gram B B^T in float64 and its
// eigen-decomposition by pivoted Cholesky + parallel-order one-sided Jacobi, one CTA per image;
// threshold, leverage, selection and gather as custom kernels. Nothing reads device memory from the
// host: every per-image decision (budget, rank, flat/non-finite images) stays on the device.
//
// The per-image kernels work on the l x l matrices in global memory (128 KB at l = 128, resident in
// L2); one CTA per image fills the GPU only for large batches (B >~ 132 on an H100/H200).
//
// Streams come from c10/cuda/CUDAStream.h (c10::cuda::getCurrentCUDAStream, which
// at::cuda::getCurrentCUDAStream aliases): ATen/cuda/CUDAContext.h would pull in the cuBLAS /
// cuSPARSE / cuSOLVER headers, which a CUDA toolkit without those libraries does not ship.
#include <ATen/Dispatch.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "../common/checks.h"
#include "../common/numerics.h"
#include "../common/philox.h"
#include "../common/pipeline.h"
#include "../common/precision_guard.h"
#include "../common/ragged.h"

namespace eadaprune {
namespace cuda {
namespace {

// kEnergySlack, kFlatRtol, kEps64, kCholeskyShiftRel, kJacobiTol, kJacobiMaxSweeps: ../common/numerics.h
constexpr int kThreads = 256;  // per CTA of the per-image kernels (a multiple of 32)

enum ImageFlag : uint8_t { kFlat = 1, kBad = 2 };

struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MaxOp {
  __device__ double operator()(double a, double b) const { return a > b ? a : b; }
};
struct MinOp {
  __device__ double operator()(double a, double b) const { return a < b ? a : b; }
};

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Reduction over the CTA; every thread gets the result. `scratch` holds 33 doubles.
template <typename Op>
__device__ double block_reduce(double v, Op op, double identity, double* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double r = lane < warps ? scratch[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) r = op(r, __shfl_xor_sync(0xffffffffu, r, o));
    if (lane == 0) scratch[32] = r;
  }
  __syncthreads();
  return scratch[32];
}

// ---------------------------------------------------------------------------------------------
// 1. Preparation: one CTA per image.
// ---------------------------------------------------------------------------------------------
template <typename in_t, typename work_t>
__global__ void prepare_kernel(const in_t* __restrict__ x, const double* __restrict__ scores,
                               work_t* __restrict__ xs, double* __restrict__ mean, double* __restrict__ scale_out,
                               double* __restrict__ energy_out, uint8_t* __restrict__ flags, int64_t n, int64_t d,
                               bool center) {
  __shared__ double scratch[33];
  const int64_t b = blockIdx.x, count = n * d;
  const in_t* src = x + b * count;
  work_t* dst = xs + b * count;
  double* mu = mean + b * d;

  double amax = 0.0, finite = 1.0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    const double v = static_cast<double>(src[k]);
    if (!isfinite(v)) finite = 0.0;
    amax = fmax(amax, fabs(v));
  }
  if (scores != nullptr)
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
      if (!isfinite(scores[b * n + k])) finite = 0.0;
  finite = block_reduce(finite, MinOp(), 1.0, scratch);  // 1 when every thread saw only finite values
  amax = block_reduce(amax, MaxOp(), 0.0, scratch);
  if (finite < 1.0) {
    for (int64_t k = threadIdx.x; k < count; k += blockDim.x) dst[k] = work_t(0);
    if (threadIdx.x == 0) {
      scale_out[b] = 1.0;
      energy_out[b] = 0.0;
      flags[b] = kFlat | kBad;
    }
    return;
  }
  const double scale = amax > 0.0 ? ldexp(1.0, ilogb(amax)) : 1.0;
  const double inv = 1.0 / scale;
  double raw = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(src[i * d + j]) * inv;
      s += v;
      raw += v * v;
    }
    mu[j] = center ? s / static_cast<double>(n) : 0.0;
  }
  raw = block_reduce(raw, SumOp(), 0.0, scratch);  // includes a __syncthreads: mu is complete
  double energy = 0.0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    const double v = static_cast<double>(src[k]) * inv - mu[k % d];
    dst[k] = static_cast<work_t>(v);
    energy += v * v;
  }
  energy = block_reduce(energy, SumOp(), 0.0, scratch);
  const bool flat = energy <= kFlatRtol * raw;
  if (flat)
    for (int64_t k = threadIdx.x; k < count; k += blockDim.x) dst[k] = work_t(0);
  if (threadIdx.x == 0) {
    scale_out[b] = scale;
    energy_out[b] = energy;
    flags[b] = flat ? kFlat : 0;
  }
}

__global__ void sketch_kernel(float* __restrict__ omega, int64_t d, int64_t l, uint64_t seed) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= d * l) return;
  const int64_t i = k / l, j = k % l;
  omega[k] = philox_randn(seed, static_cast<uint32_t>(j * d + i));
}

// ---------------------------------------------------------------------------------------------
// 2. CholeskyQR factor: shifted Cholesky of the Gram (in place, upper R) and R^{-1}; one CTA/image.
// ---------------------------------------------------------------------------------------------
// The shift s = kCholeskyShiftRel * (l + 16) * trace(a) added to the diagonal of the l x l matrix a
// (as csrc/cpu/small_linalg.h); returns s, or 0 (a untouched) when the trace is 0, i.e. a == 0.
__device__ double add_cholesky_shift(double* a, int64_t l, double* scratch) {
  double tr = 0.0;
  for (int64_t i = threadIdx.x; i < l; i += blockDim.x) tr += a[i * l + i];
  tr = block_reduce(tr, SumOp(), 0.0, scratch);
  if (!(tr > 0.0)) return 0.0;
  const double s = kCholeskyShiftRel * static_cast<double>(l + 16) * tr;
  for (int64_t i = threadIdx.x; i < l; i += blockDim.x) a[i * l + i] += s;
  __syncthreads();
  return s;
}

// Step k of a right-looking Cholesky of a (row-major, in place): row k becomes row k of the upper
// factor R (the pivot floored at s), and the trailing block is updated (only its upper triangle when
// `upper_only`: the plain factorisation never reads below the diagonal; a pivoted one swaps columns).
__device__ void cholesky_step(double* a, int64_t l, int64_t k, double s, bool upper_only) {
  const double r = sqrt(fmax(a[k * l + k], s));
  __syncthreads();
  for (int64_t j = k + threadIdx.x; j < l; j += blockDim.x) a[k * l + j] = j == k ? r : a[k * l + j] / r;
  __syncthreads();
  const int64_t m = l - k - 1;
  for (int64_t t = threadIdx.x; t < m * m; t += blockDim.x) {
    const int64_t i = k + 1 + t / m, j = k + 1 + t % m;
    if (!upper_only || j >= i) a[i * l + j] -= a[k * l + i] * a[k * l + j];
  }
  __syncthreads();
}

__global__ void cholesky_inverse_kernel(double* __restrict__ gram, double* __restrict__ inverse, int64_t l) {
  __shared__ double scratch[33];
  double* a = gram + static_cast<int64_t>(blockIdx.x) * l * l;
  double* x = inverse + static_cast<int64_t>(blockIdx.x) * l * l;
  const double s = add_cholesky_shift(a, l, scratch);
  if (s == 0.0) {  // Y == 0: R = I
    for (int64_t k = threadIdx.x; k < l * l; k += blockDim.x) x[k] = (k / l == k % l) ? 1.0 : 0.0;
    return;
  }
  for (int64_t k = 0; k < l; ++k) cholesky_step(a, l, k, s, /*upper_only=*/true);
  // x = R^{-1}, one column per thread (back substitution on R x_j = e_j).
  for (int64_t j = threadIdx.x; j < l; j += blockDim.x) {
    for (int64_t i = l - 1; i > j; --i) x[i * l + j] = 0.0;
    for (int64_t i = j; i >= 0; --i) {
      double acc = i == j ? 1.0 : 0.0;
      for (int64_t k = i + 1; k <= j; ++k) acc -= a[i * l + k] * x[k * l + j];
      x[i * l + j] = acc / a[i * l + i];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Eigen-decomposition of the Gram B B^T: pivoted shifted Cholesky, then one-sided Jacobi on the
//    rows of R in parallel (round-robin) order, one warp per pair; one CTA per image.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ int64_t round_robin_slot(int64_t k, int64_t step, int64_t n2) {
  return k == 0 ? 0 : 1 + (k - 1 + step) % (n2 - 1);
}

__global__ void gram_eigh_kernel(double* __restrict__ gram, int64_t l, int64_t* __restrict__ perm_ws,
                                 double* __restrict__ norm_ws, double* __restrict__ lambda,
                                 double* __restrict__ vectors) {
  __shared__ double scratch[33];
  __shared__ int64_t s_pivot;
  __shared__ int s_rotated;
  const int64_t b = blockIdx.x;
  double* a = gram + b * l * l;
  int64_t* perm = perm_ws + b * l;
  double* norm2 = norm_ws + b * l;
  double* lam = lambda + b * l;
  double* vec = vectors == nullptr ? nullptr : vectors + b * l * l;

  const double s = add_cholesky_shift(a, l, scratch);
  if (s == 0.0) {
    for (int64_t j = threadIdx.x; j < l; j += blockDim.x) lam[j] = 0.0;
    if (vec != nullptr)
      for (int64_t k = threadIdx.x; k < l * l; k += blockDim.x) vec[k] = (k / l == k % l) ? 1.0 : 0.0;
    return;
  }
  for (int64_t i = threadIdx.x; i < l; i += blockDim.x) perm[i] = i;
  __syncthreads();
  for (int64_t k = 0; k < l; ++k) {
    if (threadIdx.x == 0) {
      int64_t p = k;
      for (int64_t i = k + 1; i < l; ++i)
        if (a[i * l + i] > a[p * l + p]) p = i;
      s_pivot = p;
      if (p != k) {
        const int64_t t = perm[k];
        perm[k] = perm[p];
        perm[p] = t;
      }
    }
    __syncthreads();
    const int64_t p = s_pivot;
    if (p != k) {
      for (int64_t j = threadIdx.x; j < l; j += blockDim.x) {
        const double t = a[k * l + j];
        a[k * l + j] = a[p * l + j];
        a[p * l + j] = t;
      }
      __syncthreads();
      for (int64_t i = threadIdx.x; i < l; i += blockDim.x) {
        const double t = a[i * l + k];
        a[i * l + k] = a[i * l + p];
        a[i * l + p] = t;
      }
      __syncthreads();
    }
    cholesky_step(a, l, k, s, /*upper_only=*/false);
  }
  for (int64_t t = threadIdx.x; t < l * l; t += blockDim.x)
    if (t % l < t / l) a[t] = 0.0;
  __syncthreads();

  const double tol = fmax(kJacobiTol, 4.0 * static_cast<double>(l) * kEps64);  // as the CPU backend
  const int64_t n2 = l + (l & 1);  // odd l: one dummy slot that never rotates
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int sweep = 0; sweep < kJacobiMaxSweeps; ++sweep) {
    __syncthreads();
    if (threadIdx.x == 0) s_rotated = 0;
    __syncthreads();
    for (int64_t step = 0; step + 1 < n2; ++step) {
      for (int64_t pair = warp; pair < n2 / 2; pair += warps) {
        const int64_t p = round_robin_slot(pair, step, n2), q = round_robin_slot(n2 - 1 - pair, step, n2);
        if (p >= l || q >= l) continue;
        double* rp = a + p * l;
        double* rq = a + q * l;
        double alpha = 0.0, beta = 0.0, gamma = 0.0;
        for (int64_t j = lane; j < l; j += 32) {
          alpha += rp[j] * rp[j];
          beta += rq[j] * rq[j];
          gamma += rp[j] * rq[j];
        }
        alpha = warp_sum(alpha);
        beta = warp_sum(beta);
        gamma = warp_sum(gamma);
        if (alpha == 0.0 || beta == 0.0 || fabs(gamma) <= tol * sqrt(alpha) * sqrt(beta)) continue;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = (zeta >= 0.0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
        const double c = 1.0 / sqrt(1.0 + t * t), sn = c * t;
        for (int64_t j = lane; j < l; j += 32) {
          const double x = rp[j], y = rq[j];
          rp[j] = c * x - sn * y;
          rq[j] = sn * x + c * y;
        }
        if (lane == 0) s_rotated = 1;
      }
      __syncthreads();
    }
    if (s_rotated == 0) break;
  }
  for (int64_t j = threadIdx.x; j < l; j += blockDim.x) {
    double acc = 0.0;
    for (int64_t i = 0; i < l; ++i) acc += a[j * l + i] * a[j * l + i];
    norm2[j] = acc;
  }
  __syncthreads();
  // Stable descending order of the squared norms: the rank of row j.
  for (int64_t j = threadIdx.x; j < l; j += blockDim.x) {
    const double v = norm2[j];
    int64_t rank = 0;
    for (int64_t i = 0; i < l; ++i) rank += (norm2[i] > v) || (norm2[i] == v && i < j);
    lam[rank] = fmax(v - s, 0.0);
    if (vec != nullptr) {
      const double inv = 1.0 / sqrt(v);
      for (int64_t i = 0; i < l; ++i) vec[perm[i] * l + rank] = a[j * l + i] * inv;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Threshold: one thread per image.
// ---------------------------------------------------------------------------------------------
__global__ void budget_kernel(const double* __restrict__ lambda, const double* __restrict__ scale,
                              const double* __restrict__ energy, const uint8_t* __restrict__ flags, int64_t batch,
                              int64_t l, double energy_frac, int64_t min_tokens, int64_t max_tokens,
                              int64_t* __restrict__ k_star, int32_t* __restrict__ budgets,
                              bool* __restrict__ saturated_out, float* __restrict__ sigma_out,
                              float* __restrict__ energy_out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const bool flat = flags[b] & kFlat, bad = flags[b] & kBad;
  const double target = (energy_frac - kEnergySlack) * energy[b];
  double cumulative = 0.0;
  int64_t first = 0;
  for (int64_t j = 0; j < l && first == 0; ++j) {
    cumulative += lambda[b * l + j];
    if (cumulative >= target) first = j + 1;
  }
  const bool saturated = first == 0 && !flat;
  int64_t k = saturated ? max_tokens : first;
  if (flat) k = min_tokens;
  k_star[b] = k;
  budgets[b] = static_cast<int32_t>(bad ? max_tokens : imin(imax(k, min_tokens), max_tokens));
  saturated_out[b] = saturated || bad;
  const float nan = __int_as_float(0x7fc00000);
  for (int64_t j = 0; j < l; ++j)
    sigma_out[b * l + j] = bad ? nan : static_cast<float>(flat ? 0.0 : sqrt(lambda[b * l + j]) * scale[b]);
  energy_out[b] = bad ? nan : static_cast<float>(flat ? 0.0 : energy[b] * scale[b] * scale[b]);
}

// ---------------------------------------------------------------------------------------------
// 5. Selection scores, selection and gather.
// ---------------------------------------------------------------------------------------------
template <typename work_t>
__global__ void leverage_kernel(const work_t* __restrict__ u, const int64_t* __restrict__ k_star,
                                const uint8_t* __restrict__ flags, double* __restrict__ sel, int64_t batch,
                                int64_t n, int64_t l) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= batch * n) return;
  const int64_t b = k / n;
  const int64_t r = imin(k_star[b], l);
  double acc = 0.0;
  for (int64_t j = 0; j < r; ++j) {
    const double v = static_cast<double>(u[k * l + j]);
    acc += v * v;
  }
  sel[k] = flags[b] != 0 ? 0.0 : acc;  // flat or non-finite: all zero
}

__global__ void zero_bad_rows_kernel(double* __restrict__ sel, const uint8_t* __restrict__ flags, int64_t batch,
                                     int64_t n) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < batch * n && (flags[k / n] & kBad)) sel[k] = 0.0;
}

// "i ranks before j": higher score first (NaN highest, as torch.sort), ties to the lower index.
__device__ __forceinline__ bool ranks_before(double x, int64_t i, double y, int64_t j) {
  const bool nx = isnan(x), ny = isnan(y);
  if (nx || ny) return nx && ny ? i < j : nx;
  return x > y || (x == y && i < j);
}

// One CTA per image: rank of every token, the budget best kept, written ascending into indices.
__global__ void select_kernel(const double* __restrict__ sel, const int32_t* __restrict__ budgets,
                              uint8_t* __restrict__ keep_ws, int64_t* __restrict__ indices, bool* __restrict__ mask,
                              int64_t n, int64_t m) {
  __shared__ int64_t counts[kThreads + 1];
  const int64_t b = blockIdx.x;
  const double* s = sel + b * n;
  uint8_t* keep = keep_ws + b * n;
  const int64_t budget = imin(imax(budgets[b], 0), m);  // never past the image's M slots
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double v = s[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < n; ++j) rank += ranks_before(s[j], j, v, i);
    keep[i] = rank < budget;
  }
  __syncthreads();
  const int64_t chunk = (n + blockDim.x - 1) / blockDim.x;
  const int64_t lo = imin(n, static_cast<int64_t>(threadIdx.x) * chunk), hi = imin(n, lo + chunk);
  int64_t c = 0;
  for (int64_t i = lo; i < hi; ++i) c += keep[i];
  counts[threadIdx.x] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t acc = 0;
    for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
      const int64_t v = counts[t];
      counts[t] = acc;
      acc += v;
    }
  }
  __syncthreads();
  int64_t pos = counts[threadIdx.x];
  for (int64_t i = lo; i < hi; ++i)
    if (keep[i]) indices[b * m + pos++] = i;
  for (int64_t p = threadIdx.x; p < m; p += blockDim.x) {
    mask[b * m + p] = p < budget;
    if (p >= budget) indices[b * m + p] = -1;
  }
}

template <typename scalar_t>
__global__ void gather_kernel(const scalar_t* __restrict__ tokens, const int64_t* __restrict__ indices,
                              scalar_t* __restrict__ out, int64_t n, int64_t m, int64_t d) {
  const int64_t row = blockIdx.x;  // b * m + p
  const int64_t b = row / m;
  const int64_t idx = indices[row];
  scalar_t* dst = out + row * d;
  if (idx < 0) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = scalar_t(0);
  } else {
    const scalar_t* src = tokens + (b * n + idx) * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = src[j];
  }
}

// ---------------------------------------------------------------------------------------------
// Host orchestration.
// ---------------------------------------------------------------------------------------------
inline unsigned int blocks_for(int64_t count, int threads) {
  return static_cast<unsigned int>((count + threads - 1) / threads);
}

at::Tensor make_sketch(int64_t d, int64_t l, uint64_t seed, const at::TensorOptions& options) {
  at::Tensor omega = at::empty({d, l}, options.dtype(at::kFloat));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  sketch_kernel<<<blocks_for(d * l, 256), 256, 0, stream>>>(omega.data_ptr<float>(), d, l, seed);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return omega;
}

at::Tensor orthonormalize(at::Tensor y, int passes) {
  const int64_t batch = y.size(0), l = y.size(2);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (int pass = 0; pass < passes; ++pass) {
    const at::Tensor y64 = y.to(at::kDouble);
    at::Tensor gram = at::bmm(y64.transpose(1, 2), y64).contiguous();
    at::Tensor inverse = at::empty_like(gram);
    cholesky_inverse_kernel<<<batch, kThreads, 0, stream>>>(gram.data_ptr<double>(), inverse.data_ptr<double>(), l);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    y = at::bmm(y, inverse.to(y.scalar_type()));
  }
  return y;
}

struct Spectrum {
  at::Tensor scale, energy, flags;  // [B] float64, float64, uint8
  at::Tensor lambda, vectors, q;
};

Spectrum spectrum(const at::Tensor& tokens, const c10::optional<at::Tensor>& scores, const Config& cfg,
                  const c10::optional<at::Tensor>& sketch_matrix, bool want_vectors) {
  const int64_t batch = tokens.size(0), n = tokens.size(1), d = tokens.size(2), l = cfg.sketch_size;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = tokens.contiguous();
  const at::ScalarType work = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto f64 = x.options().dtype(at::kDouble);
  Spectrum sp;
  at::Tensor xs = at::empty({batch, n, d}, x.options().dtype(work));
  at::Tensor mean = at::empty({batch, d}, f64);
  sp.scale = at::empty({batch}, f64);
  sp.energy = at::empty({batch}, f64);
  sp.flags = at::empty({batch}, x.options().dtype(at::kByte));
  const at::Tensor scores64 = scores.has_value() ? scores->to(at::kDouble).contiguous() : at::Tensor();
  const double* scores_ptr = scores.has_value() ? scores64.data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eadaprune_prepare_cuda", [&] {
    if (work == at::kDouble) {
      prepare_kernel<scalar_t, double><<<batch, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), scores_ptr, xs.data_ptr<double>(), mean.data_ptr<double>(),
          sp.scale.data_ptr<double>(), sp.energy.data_ptr<double>(), sp.flags.data_ptr<uint8_t>(), n, d, cfg.center);
    } else {
      prepare_kernel<scalar_t, float><<<batch, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), scores_ptr, xs.data_ptr<float>(), mean.data_ptr<double>(),
          sp.scale.data_ptr<double>(), sp.energy.data_ptr<double>(), sp.flags.data_ptr<uint8_t>(), n, d, cfg.center);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor omega = sketch_matrix.has_value() ? sketch_matrix->to(work).contiguous()
                                                     : make_sketch(d, l, cfg.seed, x.options()).to(work);
  const at::Tensor xt = xs.transpose(1, 2);
  at::Tensor y = at::matmul(xs, omega);
  for (int64_t it = 0; it < cfg.power_iters; ++it) {
    const at::Tensor q = orthonormalize(y, 1);
    const at::Tensor w = orthonormalize(at::bmm(xt, q), 1);
    y = at::bmm(xs, w);
  }
  sp.q = orthonormalize(y, 2);
  const at::Tensor z = at::bmm(xt, sp.q).to(at::kDouble);
  at::Tensor gram = at::bmm(z.transpose(1, 2), z).contiguous();
  sp.lambda = at::empty({batch, l}, f64);
  if (want_vectors) sp.vectors = at::empty({batch, l, l}, f64);
  at::Tensor perm = at::empty({batch, l}, x.options().dtype(at::kLong));
  at::Tensor norms = at::empty({batch, l}, f64);
  gram_eigh_kernel<<<batch, kThreads, 0, stream>>>(gram.data_ptr<double>(), l, perm.data_ptr<int64_t>(),
                                                   norms.data_ptr<double>(), sp.lambda.data_ptr<double>(),
                                                   want_vectors ? sp.vectors.data_ptr<double>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sp;
}

struct Budgets {
  at::Tensor k_star, budgets, saturated, sigma, energy;
};

Budgets budgets_from_spectrum(const Spectrum& sp, const Config& cfg) {
  const int64_t batch = sp.lambda.size(0), l = sp.lambda.size(1);
  const auto opts = sp.lambda.options();
  Budgets out{at::empty({batch}, opts.dtype(at::kLong)), at::empty({batch}, opts.dtype(at::kInt)),
              at::empty({batch}, opts.dtype(at::kBool)), at::empty({batch, l}, opts.dtype(at::kFloat)),
              at::empty({batch}, opts.dtype(at::kFloat))};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  budget_kernel<<<blocks_for(batch, 128), 128, 0, stream>>>(
      sp.lambda.data_ptr<double>(), sp.scale.data_ptr<double>(), sp.energy.data_ptr<double>(),
      sp.flags.data_ptr<uint8_t>(), batch, l, cfg.energy, cfg.min_tokens, cfg.max_tokens,
      out.k_star.data_ptr<int64_t>(), out.budgets.data_ptr<int32_t>(), out.saturated.data_ptr<bool>(),
      out.sigma.data_ptr<float>(), out.energy.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The dense pipeline on checked tokens [B, N, D] with a checked configuration (see the file comment):
// budgets, and with `select` the selection and the gather. `budgets` (shares of a fixed batch total)
// replace the computed ones; k* (the leverage rank) stays the image's own.
Fields dense(const at::Tensor& tokens, const c10::optional<at::Tensor>& scores, const Config& cfg,
             const c10::optional<at::Tensor>& sketch_matrix, const c10::optional<at::Tensor>& budgets, bool select) {
  // B = 0: empty outputs (a kernel launch with an empty grid is an "invalid configuration argument").
  if (tokens.size(0) == 0) return ragged::make_outputs(tokens, 0, cfg, select);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = tokens.size(0), n = tokens.size(1), d = tokens.size(2), l = cfg.sketch_size;
  const int64_t m = cfg.max_tokens;
  const c10::optional<at::Tensor> sel_scores = select ? scores : c10::nullopt;
  const Spectrum sp = spectrum(tokens, sel_scores, cfg, sketch_matrix, /*want_vectors=*/select && !scores.has_value());
  Budgets bud = budgets_from_spectrum(sp, cfg);
  if (!select) return {bud.budgets, bud.sigma, bud.energy, bud.saturated};
  if (budgets.has_value()) {
    // Clamped to [0, M] on the device: the values of a CUDA tensor are not read on the host (that would
    // synchronise), and a share past M would make the selection write past the image's M slots.
    bud.budgets = budgets->to(at::kInt).clamp(0, m).contiguous();
  }

  at::Tensor sel;
  if (sel_scores.has_value()) {
    sel = sel_scores->to(at::kDouble).contiguous().clone();
    zero_bad_rows_kernel<<<blocks_for(batch * n, 256), 256, 0, stream>>>(sel.data_ptr<double>(),
                                                                         sp.flags.data_ptr<uint8_t>(), batch, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    sel = at::empty({batch, n}, tokens.options().dtype(at::kDouble));
    const at::Tensor u = at::bmm(sp.q, sp.vectors.to(sp.q.scalar_type())).contiguous();
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "eadaprune_leverage_cuda", [&] {
      leverage_kernel<scalar_t><<<blocks_for(batch * n, 256), 256, 0, stream>>>(
          u.data_ptr<scalar_t>(), bud.k_star.data_ptr<int64_t>(), sp.flags.data_ptr<uint8_t>(),
          sel.data_ptr<double>(), batch, n, l);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  const at::Tensor x = tokens.contiguous();
  at::Tensor kept = at::empty({batch, m, d}, x.options());
  at::Tensor indices = at::empty({batch, m}, x.options().dtype(at::kLong));
  at::Tensor mask = at::empty({batch, m}, x.options().dtype(at::kBool));
  at::Tensor keep_ws = at::empty({batch, n}, x.options().dtype(at::kByte));
  select_kernel<<<batch, kThreads, 0, stream>>>(sel.data_ptr<double>(), bud.budgets.data_ptr<int32_t>(),
                                                keep_ws.data_ptr<uint8_t>(), indices.data_ptr<int64_t>(),
                                                mask.data_ptr<bool>(), n, m);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eadaprune_gather_cuda", [&] {
    gather_kernel<scalar_t><<<batch * m, 128, 0, stream>>>(x.data_ptr<scalar_t>(), indices.data_ptr<int64_t>(),
                                                            kept.data_ptr<scalar_t>(), n, m, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {kept, indices, bud.budgets, mask, bud.sigma, bud.energy, bud.saturated};
}

}  // namespace

at::Tensor gaussian_sketch(int64_t num_features, int64_t sketch_size, uint64_t seed) {
  check_sketch_size(num_features, sketch_size);
  const auto options = at::TensorOptions().device(at::kCUDA, c10::cuda::current_device());
  return make_sketch(num_features, sketch_size, seed, options);
}

// Ragged input (csrc/common/ragged.h) costs one host synchronisation, the copy of cu_seqlens to the
// host (its values are then checked, which also keeps garbage bounds from ever reaching a kernel).
// After it, each run of consecutive equal-size images is a [k, N, D] view of the packed rows that
// goes through the dense pipeline on the current stream, and its fields are copied (device to
// device, asynchronously) into the batch-wide outputs. budgets' values are not read (as the dense
// path: they are clamped on the device). A synchronisation-free ragged path on a GPU is the Triton
// backend's single launch; this is the fallback, with launches per run of images.
Fields run(const Request& r) {
  check_request(r, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard device_guard(r.tokens.device());
  c10::NoGradGuard no_grad;
  const Fp32MatmulGuard ieee_fp32_matmuls;  // independent of the caller's TF32 / bf16 settings
  if (!r.cu_seqlens.has_value()) return dense(r.tokens, r.scores, r.cfg, r.sketch, r.budgets, r.select);
  const std::vector<int64_t> bounds = image_bounds(*r.cu_seqlens, r.tokens.size(0));  // the one sync
  // One [D, L] sketch: image i takes its first l_i columns, the [D, l_i] sketch.
  const at::Tensor omega = r.sketch.has_value() ? *r.sketch
                                                : make_sketch(r.tokens.size(1), r.cfg.sketch_size, r.cfg.seed,
                                                              r.tokens.options());
  const auto in_order = [](const std::vector<ragged::Segment>& segments, const ragged::SegmentTask& task) {
    for (const auto& segment : segments) task(segment);
  };
  return ragged::run(r, bounds, omega, dense, in_order);
}

}  // namespace cuda
}  // namespace eadaprune
