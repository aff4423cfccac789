// CUDA kernel of gcnprune::gap_stats (schema in csrc/ops.cpp; CPU kernel and semantics in
// csrc/cpu/gap_stats_cpu.cpp).
//
// x is viewed as [N, C, S] with arbitrary strides. Two stages, no atomics:
//   1. plane stage: the moments of every (n, c) plane (S elements): mean (written straight into
//      gap [N, C]), m2 (sum of squared deviations from the plane mean: a second pass over the
//      plane, which is served from L1/L2), sum |x|, zero count, max -> [N, C] scratch buffers.
//        plane-contiguous x (stride(S) == 1, NCHW): one warp per plane, coalesced along S;
//        channel-contiguous x (stride(C) == 1, channels_last, [N, C]): one block per (n, 32
//        channels), threadIdx.x over the channels (coalesced), threadIdx.y over S.
//   2. channel stage: one thread per channel merges its N planes (Chan's parallel-variance
//      formula, float64) and writes mean/var/abs_mean/zero_frac/max.
// Accumulation is float (double for float64 input); fp16/bf16 are widened on load.
// A NaN anywhere in a channel makes its sum |x| NaN, which is what flags max as NaN (the max
// reduction itself does not propagate NaN), as in the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/acc_type.h"
#include "common/gap_stats.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

namespace gcnprune {
namespace {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T max_no_nan(T a, T b) {
  return b > a ? b : a;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = max_no_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Scratch of the plane stage, [N, C] each (the plane mean goes into gap).
template <typename acc_t>
struct PlaneStats {
  acc_t* mean;      // = gap
  acc_t* m2;
  acc_t* abs_sum;
  int64_t* zeros;
  acc_t* max;
};

// Plane-contiguous: one warp per (n, c) plane.
template <typename scalar_t, typename acc_t>
__global__ void plane_stats_contiguous_kernel(const scalar_t* __restrict__ x, int64_t N,
                                              int64_t C, int64_t S, int64_t sN, int64_t sC,
                                              PlaneStats<acc_t> out) {
  const int64_t plane = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (plane >= N * C) return;  // whole warps exit together
  const int64_t n = plane / C, c = plane % C;
  const scalar_t* p = x + n * sN + c * sC;
  acc_t sum = 0, abs_sum = 0, mx = -std::numeric_limits<acc_t>::infinity();
  int64_t zeros = 0;
  for (int64_t i = lane; i < S; i += kWarp) {
    const acc_t v = static_cast<acc_t>(p[i]);
    sum += v;
    abs_sum += v < acc_t(0) ? -v : v;
    zeros += v == acc_t(0);
    mx = max_no_nan(mx, v);
  }
  sum = warp_sum(sum);
  abs_sum = warp_sum(abs_sum);
  zeros = warp_sum(zeros);
  mx = warp_max(mx);
  const acc_t mean = sum / static_cast<acc_t>(S);
  acc_t m2 = 0;
  for (int64_t i = lane; i < S; i += kWarp) {
    const acc_t d = static_cast<acc_t>(p[i]) - mean;
    m2 += d * d;
  }
  m2 = warp_sum(m2);
  if (lane == 0) {
    out.mean[plane] = mean;
    out.m2[plane] = m2;
    out.abs_sum[plane] = abs_sum;
    out.zeros[plane] = zeros;
    out.max[plane] = mx;
  }
}

constexpr int kTileC = 32;  // channels per block (threadIdx.x)
constexpr int kRowsY = 8;   // threadIdx.y: positions s handled in parallel

// Channel-contiguous: one block per (n, 32 channels) (blockIdx.x = n * tiles + tile); reduce
// over threadIdx.y in shared memory.
template <typename scalar_t, typename acc_t>
__global__ void plane_stats_channels_kernel(const scalar_t* __restrict__ x, int64_t N, int64_t C,
                                            int64_t S, int64_t sN, int64_t sS,
                                            PlaneStats<acc_t> out) {
  __shared__ acc_t sh_sum[kRowsY][kTileC];
  __shared__ acc_t sh_abs[kRowsY][kTileC];
  __shared__ acc_t sh_max[kRowsY][kTileC];
  __shared__ int64_t sh_zero[kRowsY][kTileC];
  __shared__ acc_t sh_mean[kTileC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = (C + kTileC - 1) / kTileC;
  const int64_t n = static_cast<int64_t>(blockIdx.x) / tiles;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) % tiles) * kTileC + tx;
  const bool active = c < C;
  const scalar_t* p = x + n * sN + (active ? c : 0);
  acc_t sum = 0, abs_sum = 0, mx = -std::numeric_limits<acc_t>::infinity();
  int64_t zeros = 0;
  if (active) {
    for (int64_t s = ty; s < S; s += kRowsY) {
      const acc_t v = static_cast<acc_t>(p[s * sS]);
      sum += v;
      abs_sum += v < acc_t(0) ? -v : v;
      zeros += v == acc_t(0);
      mx = max_no_nan(mx, v);
    }
  }
  sh_sum[ty][tx] = sum;
  sh_abs[ty][tx] = abs_sum;
  sh_max[ty][tx] = mx;
  sh_zero[ty][tx] = zeros;
  __syncthreads();
  if (ty == 0) {
    for (int r = 1; r < kRowsY; ++r) {
      sum += sh_sum[r][tx];
      abs_sum += sh_abs[r][tx];
      mx = max_no_nan(mx, sh_max[r][tx]);
      zeros += sh_zero[r][tx];
    }
    sh_mean[tx] = sum / static_cast<acc_t>(S);
  }
  __syncthreads();
  const acc_t mean = sh_mean[tx];
  acc_t m2 = 0;
  if (active) {
    for (int64_t s = ty; s < S; s += kRowsY) {
      const acc_t d = static_cast<acc_t>(p[s * sS]) - mean;
      m2 += d * d;
    }
  }
  __syncthreads();  // sh_sum is reused for m2
  sh_sum[ty][tx] = m2;
  __syncthreads();
  if (ty == 0 && active) {
    for (int r = 1; r < kRowsY; ++r) m2 += sh_sum[r][tx];
    const int64_t i = n * C + c;
    out.mean[i] = mean;
    out.m2[i] = m2;
    out.abs_sum[i] = abs_sum;
    out.zeros[i] = zeros;
    out.max[i] = mx;
  }
}

// One thread per channel: merge the N planes (each S elements) in float64.
template <typename acc_t>
__global__ void channel_merge_kernel(PlaneStats<acc_t> planes, int64_t N, int64_t C, int64_t S,
                                     acc_t* __restrict__ mean_out, acc_t* __restrict__ var_out,
                                     acc_t* __restrict__ abs_out, acc_t* __restrict__ zero_out,
                                     acc_t* __restrict__ max_out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double s = static_cast<double>(S);
  double cnt = 0, run_mean = 0, m2 = 0, mean_sum = 0, abs_sum = 0, zeros = 0;
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t i = n * C + c;
    const double mb = static_cast<double>(planes.mean[i]);
    const double m2b = static_cast<double>(planes.m2[i]);
    if (cnt == 0) {
      run_mean = mb;
      m2 = m2b;
    } else {
      const double tot = cnt + s;
      const double delta = mb - run_mean;
      run_mean += delta * (s / tot);
      m2 += m2b + delta * delta * (cnt * s / tot);
    }
    cnt += s;
    mean_sum += mb;
    abs_sum += static_cast<double>(planes.abs_sum[i]);
    zeros += static_cast<double>(planes.zeros[i]);
    mx = max_no_nan(mx, static_cast<double>(planes.max[i]));
  }
  const double var = m2 / cnt;
  mean_out[c] = static_cast<acc_t>(mean_sum / static_cast<double>(N));
  var_out[c] = static_cast<acc_t>(isnan(var) ? var : (var < 0 ? 0.0 : var));
  abs_out[c] = static_cast<acc_t>(abs_sum / cnt);
  zero_out[c] = static_cast<acc_t>(zeros / cnt);
  max_out[c] = static_cast<acc_t>(isnan(abs_sum) ? static_cast<double>(NAN) : mx);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gap_stats_cuda(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.is_cuda(), "gap_stats (CUDA kernel): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  gap_detail::GapProblem p = gap_detail::prepare(x_in);
  if (p.empty) return p.outputs();
  const auto dtype = x_in.scalar_type();
  const int64_t N = p.N, C = p.C, S = p.S;
  const at::Tensor& x = p.x;
  const auto opts = p.gap.options();
  at::Tensor &gap = p.gap, &mean = p.mean, &var = p.var, &abs_mean = p.abs_mean,
             &zero_frac = p.zero_frac, &maxv = p.max;
  const bool channels_layout = p.channel_contiguous;

  at::Tensor m2 = at::empty({N, C}, opts), abs_sum = at::empty({N, C}, opts);
  at::Tensor pmax = at::empty({N, C}, opts);
  at::Tensor zeros = at::empty({N, C}, x_in.options().dtype(at::kLong));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gap_stats_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    PlaneStats<acc_t> ps{gap.mutable_data_ptr<acc_t>(), m2.mutable_data_ptr<acc_t>(),
                         abs_sum.mutable_data_ptr<acc_t>(), zeros.mutable_data_ptr<int64_t>(),
                         pmax.mutable_data_ptr<acc_t>()};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    if (channels_layout) {
      const dim3 block(kTileC, kRowsY);
      const dim3 grid(static_cast<unsigned>(N * ((C + kTileC - 1) / kTileC)));
      plane_stats_channels_kernel<scalar_t, acc_t><<<grid, block, 0, stream>>>(
          xp, N, C, S, x.stride(0), x.stride(2), ps);
    } else {
      constexpr int kThreads = 256;
      const int64_t blocks = (N * C * kWarp + kThreads - 1) / kThreads;
      plane_stats_contiguous_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                                       stream>>>(xp, N, C, S, x.stride(0),
                                                                 x.stride(1), ps);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int kMergeThreads = 128;
    channel_merge_kernel<acc_t><<<static_cast<unsigned>((C + kMergeThreads - 1) / kMergeThreads),
                                  kMergeThreads, 0, stream>>>(
        ps, N, C, S, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(),
        abs_mean.mutable_data_ptr<acc_t>(), zero_frac.mutable_data_ptr<acc_t>(),
        maxv.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gap, mean, var, abs_mean, zero_frac, maxv};
}

}  // namespace

TORCH_LIBRARY_IMPL(gcnprune, CUDA, m) { m.impl("gap_stats", &gap_stats_cuda); }

}  // namespace gcnprune
