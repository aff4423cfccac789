// CUDA kernels of gcnprune::cosine_similarity, gcnprune::kl_similarity and gcnprune::knn_graph.
//
// Layout: f [C, B] -> normalized rows xn [C, B] contiguous in the compute dtype (float32, or
// float64 for float64 input), exactly as on the CPU (csrc/common/knn_graph.h); for the KL
// similarity z, p [C, B] and a [C] (knn_detail::kl_rows), and a similarity tile is
// S = P[I] Z[J]^T + Z[I] P[J]^T (two cuBLAS GEMMs) turned in place into
// exp(-max((a_i + a_j) - S_ij, 0) / 2) by kl_tile_kernel.
//
// knn_graph: within each segment, T x T tiles S = xn[I] xn[J]^T (cuBLAS through at::mm_out)
// are merged into a running per-row top-k list (topv/topi [C, k], sorted best first) by
// tile_topk_kernel: one warp per tile row reads 32 columns per step (coalesced), a ballot
// selects the candidates that beat the row's current k-th entry, and lane 0 inserts them
// (insertions are rare once the list is full, so the scan runs at memory speed). All tiles of
// a segment are computed (no symmetry trick: cuBLAS is cheap here, the scan dominates), so each
// pair's value comes from one of two GEMM results; the symmetrization (sort + unique with torch
// ops on the device) takes the max of the two, which keeps the weights exactly symmetric.
// Memory: O(C * k + T^2); T = 4096 by default (GCNPRUNE_KNN_TILE overrides).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/knn_graph.h"

namespace gcnprune {
namespace {

constexpr int64_t kDefaultTileCuda = 4096;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();  // empty list slot

// (av, aj) ranks before (bv, bj): larger similarity first, ties to the lower column index.
template <typename scalar_t>
__device__ __forceinline__ bool ranks_before(scalar_t av, int64_t aj, scalar_t bv, int64_t bj) {
  return av > bv || (av == bv && aj < bj);
}

// Merges tile s [ra, rb] (rows a0.., columns b0.. of the node range) into the sorted lists
// topv/topi [C, kk] of rows a0..a0+ra. One warp per tile row; the diagonal (self) is skipped.
template <typename scalar_t>
__global__ void tile_topk_kernel(const scalar_t* __restrict__ s, int64_t ra, int64_t rb,
                                 int64_t a0, int64_t b0, int64_t kk, scalar_t* __restrict__ topv,
                                 int64_t* __restrict__ topi) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= ra) return;  // uniform per warp
  const int64_t i = a0 + warp;
  scalar_t* lv = topv + i * kk;
  int64_t* li = topi + i * kk;
  scalar_t wv = lv[kk - 1];  // current k-th (worst kept) entry; sentinel while not full
  int64_t wi = li[kk - 1];
  const scalar_t* row = s + warp * rb;
  for (int64_t base = 0; base < rb; base += 32) {
    const int64_t c = base + lane;
    const int64_t j = b0 + c;
    scalar_t v = scalar_t(0);
    bool pass = false;
    if (c < rb && j != i) {
      v = row[c];
      pass = ranks_before(v, j, wv, wi);
    }
    unsigned mask = __ballot_sync(kFullMask, pass);
    while (mask) {
      const int src = __ffs(mask) - 1;
      mask &= mask - 1;
      const scalar_t cv = __shfl_sync(kFullMask, v, src);
      const int64_t cj = __shfl_sync(kFullMask, static_cast<long long>(j), src);
      if (lane == 0 && ranks_before(cv, cj, wv, wi)) {
        int64_t p = kk - 1;  // insertion into the sorted list; the last entry drops out
        while (p > 0 && ranks_before(cv, cj, lv[p - 1], li[p - 1])) {
          lv[p] = lv[p - 1];
          li[p] = li[p - 1];
          --p;
        }
        lv[p] = cv;
        li[p] = cj;
        wv = lv[kk - 1];
        wi = li[kk - 1];
      }
      wv = __shfl_sync(kFullMask, wv, 0);
      wi = __shfl_sync(kFullMask, static_cast<long long>(wi), 0);
    }
  }
}

// out [c, c]: copies the strict upper triangle onto the lower one (32 x 32 tiles through shared
// memory), so that the result is exactly symmetric.
template <typename scalar_t>
__global__ void mirror_upper_kernel(scalar_t* out, int64_t c) {
  __shared__ scalar_t tile[32][33];
  const int64_t bi = blockIdx.y, bj = blockIdx.x;  // source block (rows bi, columns bj)
  if (bi > bj) return;
  const int tx = threadIdx.x;
  for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {
    const int64_t r = bi * 32 + ty, col = bj * 32 + tx;
    if (r < c && col < c) tile[ty][tx] = out[r * c + col];
  }
  __syncthreads();
  for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {
    const int64_t r = bj * 32 + ty, col = bi * 32 + tx;  // destination (transposed block)
    if (r < c && col < c && r > col) out[r * c + col] = tile[tx][ty];
  }
}

__device__ __forceinline__ float exp_dev(float x) { return expf(x); }
__device__ __forceinline__ double exp_dev(double x) { return exp(x); }

// s [ra, rb] (rows a0.., columns b0..) holds M_ij + M_ji; replaced in place by the KL similarity
// exp(-max((a_i + a_j) - s_ij, 0) / 2), and by exactly 1 where i == j when unit_diagonal.
template <typename scalar_t>
__global__ void kl_tile_kernel(scalar_t* __restrict__ s, const scalar_t* __restrict__ a,
                               int64_t ra, int64_t rb, int64_t a0, int64_t b0,
                               bool unit_diagonal) {
  const int64_t n = ra * rb;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = a0 + e / rb, j = b0 + e % rb;
    const scalar_t d = (a[i] + a[j]) - s[e];
    s[e] = (unit_diagonal && i == j) ? scalar_t(1)
                                     : exp_dev(scalar_t(-0.5) * (d > scalar_t(0) ? d : scalar_t(0)));
  }
}

void launch_kl_tile(at::Tensor& s, const at::Tensor& a, int64_t a0, int64_t b0,
                    bool unit_diagonal) {
  const int64_t ra = s.size(0), rb = s.size(1);
  if (ra * rb == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((ra * rb + threads - 1) / threads, 65535);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "kl_tile_cuda", [&] {
    kl_tile_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        s.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), ra, rb, a0, b0, unit_diagonal);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One KL similarity tile into s [ra, rb] (rows a.., columns b..).
void kl_tile(at::Tensor& s, const at::Tensor& z, const at::Tensor& p, const at::Tensor& a,
             int64_t a0, int64_t ra, int64_t b0, int64_t rb, bool unit_diagonal) {
  at::mm_out(s, p.narrow(0, a0, ra), z.narrow(0, b0, rb).t());
  s.addmm_(z.narrow(0, a0, ra), p.narrow(0, b0, rb).t());
  launch_kl_tile(s, a, a0, b0, unit_diagonal);
}

at::Tensor kl_similarity_cuda(const at::Tensor& f) {
  knn_detail::check_features(f);
  c10::cuda::CUDAGuard guard(f.device());
  auto [z, p, a] = knn_detail::kl_rows(f);
  const int64_t c = z.size(0);
  at::Tensor m = at::mm(p, z.t());
  // M + M^T is exactly symmetric (m_ij + m_ji == m_ji + m_ij), and so is the result.
  at::Tensor out = at::add(m, m.t()).contiguous();
  launch_kl_tile(out, a, 0, 0, /*unit_diagonal=*/true);
  return out;
}

at::Tensor cosine_similarity_cuda(const at::Tensor& f, bool center) {
  knn_detail::check_features(f);
  c10::cuda::CUDAGuard guard(f.device());
  at::Tensor xn = knn_detail::normalized_rows(f, center);
  const int64_t c = xn.size(0);
  at::Tensor out = at::mm(xn, xn.t()).contiguous();
  if (c == 0) return out;
  const int64_t nb = (c + 31) / 32;
  TORCH_CHECK(nb <= 65535, "cosine_similarity: C = ", c, " too large for one grid");
  const dim3 grid(static_cast<unsigned>(nb), static_cast<unsigned>(nb));
  const dim3 block(32, 8);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "cosine_similarity_cuda", [&] {
    mirror_upper_kernel<scalar_t><<<grid, block, 0, stream>>>(out.data_ptr<scalar_t>(), c);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> knn_graph_cuda(
    const at::Tensor& f, int64_t k, const std::optional<at::Tensor>& segments, bool center,
    std::string_view similarity) {
  knn_detail::check_features(f);
  knn_detail::check_k(k);
  const bool kl = knn_detail::parse_similarity(similarity) == knn_detail::Similarity::kKl;
  c10::cuda::CUDAGuard guard(f.device());
  const int64_t c = f.size(0);
  std::vector<int64_t> offs = knn_detail::segment_offsets(segments, c, f);
  // xn: the cosine's unit rows, or the KL's z (p and a alongside); center: cosine only.
  at::Tensor xn, p, a;
  if (kl) {
    std::tie(xn, p, a) = knn_detail::kl_rows(f);
  } else {
    xn = knn_detail::normalized_rows(f, center);
  }
  const int64_t max_len = knn_detail::max_segment_length(offs);
  const int64_t kk = knn_detail::effective_k(k, max_len);
  const auto long_opts = f.options().dtype(at::kLong);
  if (kk == 0) {
    return {at::zeros({c + 1}, long_opts), at::empty({0}, long_opts),
            at::empty({0}, xn.options())};
  }
  const int64_t tile = std::min(knn_detail::tile_size(kDefaultTileCuda), max_len);
  at::Tensor topv = at::full({c, kk}, -std::numeric_limits<double>::infinity(), xn.options());
  at::Tensor topi = at::full({c, kk}, kNoIndex, long_opts);
  at::Tensor buf = at::empty({tile * tile}, xn.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  for (size_t g = 0; g + 1 < offs.size(); ++g) {
    const int64_t lo = offs[g], hi = offs[g + 1];
    if (hi - lo < 2) continue;
    for (int64_t a0 = lo; a0 < hi; a0 += tile) {
      const int64_t ra = std::min(tile, hi - a0);
      for (int64_t b = lo; b < hi; b += tile) {
        const int64_t rb = std::min(tile, hi - b);
        at::Tensor s = buf.narrow(0, 0, ra * rb).view({ra, rb});
        if (kl) {
          kl_tile(s, xn, p, a, a0, ra, b, rb, /*unit_diagonal=*/false);
        } else {
          at::mm_out(s, xn.narrow(0, a0, ra), xn.narrow(0, b, rb).t());
        }
        const int64_t threads = 32 * kWarpsPerBlock;
        const int64_t blocks = (ra * 32 + threads - 1) / threads;
        AT_DISPATCH_FLOATING_TYPES(xn.scalar_type(), "knn_graph_cuda", [&] {
          tile_topk_kernel<scalar_t><<<static_cast<unsigned>(blocks),
                                       static_cast<unsigned>(threads), 0, stream>>>(
              s.data_ptr<scalar_t>(), ra, rb, a0, b, kk, topv.data_ptr<scalar_t>(),
              topi.data_ptr<int64_t>());
        });
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  }
  // Symmetrize and build CSR on the device: union of (i, j) and (j, i), max of the two values.
  at::Tensor valid = topi != kNoIndex;
  at::Tensor src = at::arange(c, long_opts).unsqueeze(1).expand({c, kk}).masked_select(valid);
  at::Tensor dst = topi.masked_select(valid);
  at::Tensor val = topv.masked_select(valid);
  at::Tensor key = at::cat({src * c + dst, dst * c + src});
  at::Tensor vals = at::cat({val, val});
  auto sorted = key.sort();
  at::Tensor skey = std::get<0>(sorted);
  vals = vals.index_select(0, std::get<1>(sorted));
  auto uniq = at::unique_consecutive(skey, /*return_inverse=*/true);
  at::Tensor ukey = std::get<0>(uniq);
  at::Tensor inverse = std::get<1>(uniq);
  at::Tensor values = at::zeros({ukey.numel()}, xn.options())
                          .scatter_reduce_(0, inverse, vals, "amax", /*include_self=*/false)
                          .clamp_min_(0);
  at::Tensor rows = at::div(ukey, c, "floor");
  at::Tensor indices = ukey - rows * c;
  at::Tensor indptr = at::zeros({c + 1}, long_opts);
  indptr.narrow(0, 1, c).copy_(at::bincount(rows, {}, c).cumsum(0));
  return {indptr, indices, values};
}

}  // namespace

TORCH_LIBRARY_IMPL(gcnprune, CUDA, m) {
  m.impl("cosine_similarity", &cosine_similarity_cuda);
  m.impl("kl_similarity", &kl_similarity_cuda);
  m.impl("knn_graph", &knn_graph_cuda);
}

}  // namespace gcnprune
