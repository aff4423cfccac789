// CPU kernel of gcnprune::gap_stats (schema in csrc/ops.cpp).
//
// x is viewed as [N, C, S] (S = H*W, L or 1) with arbitrary strides and read once. Chunk
// moments (count, sum, sum of squared deviations, sum |x|, zeros, max) are merged into
// per-channel float64 moments with the parallel-variance (Chan) formula, so the variance stays
// accurate for data with a large offset (x = 1000 + noise). Two layouts, no copies:
//   A "plane-contiguous" (stride(S) == 1, e.g. NCHW contiguous): vectors run along S inside one
//     (n, c) plane. A chunk (<= 16 KiB of one plane) is reduced twice: sum/abs/zeros/max, then
//     the squared deviations from the chunk mean, re-read from L1.
//   B "channel-contiguous" (stride(C) == 1, e.g. channels_last, [N, C]): vectors run across 8
//     neighbouring channels (64 per task), rows are the S positions, then the samples. Rows are
//     strided, so a chunk is reduced in one pass on data shifted by the channel's running mean
//     (see reduce_channel_range).
// Other strides are copied to one of these first.
//
// Work is split over (sample block, channel group) tasks with at::parallel_for; a sample block
// holds all N samples unless there are too few channel groups to keep the threads busy (and,
// in layout B, at least one block per thread so that each thread reads whole rows).
// Each task owns float64 moments for its channels; blocks are merged at the end (Chan again).
// Software prefetch keeps DRAM busy while a chunk's second pass and merge run from L1.
//
// Vector code (cpu/simd.h): 32-byte GCC/Clang vector-extension types (8 floats or 4 doubles per
// vector; acc_t = float, or double for float64 input; fp16/bf16 are widened to float on load).
// The kernel body is compiled twice, for the baseline ISA and as an AVX2 clone picked at run time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/gap_stats.h"
#include "cpu/simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace gcnprune {
namespace {

using cpu::hmax;
using cpu::hsum;
using cpu::Simd;
using cpu::splat;
using cpu::vabs;
using cpu::vmax;

// Bytes of x reduced per chunk (read twice: the second read hits L1).
constexpr int64_t kChunkBytes = 16384;
// Software prefetch distance of the plane-contiguous loop.
constexpr int64_t kPrefetchBytes = 4096;

// Running moments of one channel, float64.
struct Moments {
  double n = 0;         // elements
  double sum = 0;       // sum of x (the mean is sum / n, so +-inf behave like a plain sum)
  double mean = 0;      // running mean used by the variance merge
  double m2 = 0;        // sum of squared deviations from `mean`
  double abs_sum = 0;   // sum of |x| (NaN iff some x is NaN: used to flag max as NaN)
  double zeros = 0;     // number of x == 0
  double max = -std::numeric_limits<double>::infinity();
};

// Merge a chunk (nb elements with sum sum_b, mean mean_b = sum_b / nb, m2 around mean_b, ...)
// into `a` (Chan et al.).
GCNPRUNE_ALWAYS_INLINE void merge_chunk(Moments& a, double nb, double sum_b, double mean_b,
                                         double m2_b, double abs_b, double zeros_b,
                                         double max_b) {
  if (a.n == 0) {
    a.mean = mean_b;
    a.m2 = m2_b;
  } else {
    const double w = nb / (a.n + nb);
    const double delta = mean_b - a.mean;
    a.mean += delta * w;
    a.m2 += m2_b + delta * delta * a.n * w;
  }
  a.n += nb;
  a.sum += sum_b;
  a.abs_sum += abs_b;
  a.zeros += zeros_b;
  a.max = std::max(a.max, max_b);
}

GCNPRUNE_ALWAYS_INLINE void merge_moments(Moments& a, const Moments& b) {
  if (b.n == 0) return;
  if (a.n == 0) {
    a = b;
    return;
  }
  const double n = a.n + b.n;
  const double delta = b.mean - a.mean;
  a.mean += delta * (b.n / n);
  a.m2 += b.m2 + delta * delta * (a.n * b.n / n);
  a.n = n;
  a.sum += b.sum;
  a.abs_sum += b.abs_sum;
  a.zeros += b.zeros;
  a.max = std::max(a.max, b.max);
}

// Simd<acc_t>::kSize consecutive elements of p as acc_t lanes.
template <typename scalar_t, typename acc_t>
GCNPRUNE_ALWAYS_INLINE typename Simd<acc_t>::V load_lanes(const scalar_t* p) {
  using V = typename Simd<acc_t>::V;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    typedef uint16_t U16 __attribute__((vector_size(16)));
    typedef uint32_t U32 __attribute__((vector_size(32)));
    U16 h;
    std::memcpy(&h, p, sizeof(U16));
    return (V)(__builtin_convertvector(h, U32) << 16);  // bf16 is the top half of a float
#if defined(__FLT16_MAX__)
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    typedef _Float16 H8 __attribute__((vector_size(16)));
    H8 h;
    std::memcpy(&h, p, sizeof(H8));
    return __builtin_convertvector(h, V);  // vcvtph2ps with F16C
#endif
  } else {
    V v;
    for (int64_t i = 0; i < Simd<acc_t>::kSize; ++i) v[i] = static_cast<acc_t>(p[i]);
    return v;
  }
}

// The first `count` lanes from p (count may be <= 0 or >= kSize); other lanes are 0.
template <typename scalar_t, typename acc_t>
GCNPRUNE_ALWAYS_INLINE typename Simd<acc_t>::V load_lanes_partial(const scalar_t* p,
                                                                  int64_t count) {
  if (count >= Simd<acc_t>::kSize) return load_lanes<scalar_t, acc_t>(p);
  typename Simd<acc_t>::V v = {};
  for (int64_t i = 0; i < count; ++i) v[i] = static_cast<acc_t>(p[i]);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Layout A: one contiguous run of `len` elements of one channel (len * sizeof <= kChunkBytes).
// Returns its sum; merges its moments into `mom`.
template <typename scalar_t, typename acc_t>
GCNPRUNE_ALWAYS_INLINE double reduce_contiguous_chunk(const scalar_t* p, int64_t len,
                                                      Moments& mom) {
  using V = typename Simd<acc_t>::V;
  using I = typename Simd<acc_t>::I;
  constexpr int64_t kVS = Simd<acc_t>::kSize;
  const V ninf = splat<acc_t>(-std::numeric_limits<acc_t>::infinity());
  V s0 = {}, s1 = {}, a0 = {}, a1 = {}, m0 = ninf, m1 = ninf;
  I z0 = {}, z1 = {};  // -(number of zeros) per lane: comparisons give -1 for true
  int64_t i = 0;
  for (; i + 2 * kVS <= len; i += 2 * kVS) {
    // Keep DRAM busy while the second pass and the merge run from L1: fetch ~4 KiB ahead
    // (past this chunk that is the next plane for NCHW; prefetches never fault).
    __builtin_prefetch(p + i + kPrefetchBytes / static_cast<int64_t>(sizeof(scalar_t)));
    const V v0 = load_lanes<scalar_t, acc_t>(p + i);
    const V v1 = load_lanes<scalar_t, acc_t>(p + i + kVS);
    s0 += v0;
    s1 += v1;
    a0 += vabs<acc_t>(v0);
    a1 += vabs<acc_t>(v1);
    z0 += (v0 == 0);
    z1 += (v1 == 0);
    m0 = vmax<acc_t>(v0, m0);
    m1 = vmax<acc_t>(v1, m1);
  }
  for (; i + kVS <= len; i += kVS) {
    const V v0 = load_lanes<scalar_t, acc_t>(p + i);
    s0 += v0;
    a0 += vabs<acc_t>(v0);
    z0 += (v0 == 0);
    m0 = vmax<acc_t>(v0, m0);
  }
  const int64_t vec_end = i;
  double sum = hsum(s0 + s1), abs_sum = hsum(a0 + a1);
  double zeros = -hsum(z0 + z1), mx = hmax(vmax<acc_t>(m0, m1));
  for (; i < len; ++i) {
    const acc_t v = static_cast<acc_t>(p[i]);
    sum += v;
    abs_sum += std::abs(v);
    zeros += v == acc_t(0);
    mx = std::max(mx, static_cast<double>(v));
  }
  // Second pass (from L1): squared deviations from the chunk mean.
  const double mean = sum / static_cast<double>(len);
  const acc_t mean_a = static_cast<acc_t>(mean);
  const V mv = splat<acc_t>(mean_a);
  V q0 = {}, q1 = {};
  i = 0;
  for (; i + 2 * kVS <= vec_end; i += 2 * kVS) {
    const V d0 = load_lanes<scalar_t, acc_t>(p + i) - mv;
    const V d1 = load_lanes<scalar_t, acc_t>(p + i + kVS) - mv;
    q0 += d0 * d0;
    q1 += d1 * d1;
  }
  for (; i < vec_end; i += kVS) {
    const V d0 = load_lanes<scalar_t, acc_t>(p + i) - mv;
    q0 += d0 * d0;
  }
  double m2 = hsum(q0 + q1);
  for (; i < len; ++i) {
    const double d = static_cast<double>(static_cast<acc_t>(p[i]) - mean_a);
    m2 += d * d;
  }
  // Centre on the float64 mean rather than its acc_t rounding.
  const double shift = mean - static_cast<double>(mean_a);
  m2 -= static_cast<double>(len) * shift * shift;
  merge_chunk(mom, static_cast<double>(len), sum, mean, m2, abs_sum, zeros, mx);
  return sum;
}

// Planes (n, c) for n in [n0, n1), c in [c0, c1); x is plane-contiguous (stride(S) == 1).
template <typename scalar_t, typename acc_t>
GCNPRUNE_ALWAYS_INLINE void reduce_planes(const scalar_t* x, int64_t n0, int64_t n1, int64_t c0,
                                          int64_t c1, int64_t S, int64_t sN, int64_t sC,
                                          int64_t C, acc_t* gap, Moments* mom) {
  const int64_t chunk = std::max<int64_t>(64, kChunkBytes / static_cast<int64_t>(sizeof(scalar_t)));
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t c = c0; c < c1; ++c) {
      const scalar_t* p = x + n * sN + c * sC;
      double plane_sum = 0;
      for (int64_t s = 0; s < S; s += chunk) {
        plane_sum += reduce_contiguous_chunk<scalar_t, acc_t>(p + s, std::min(chunk, S - s),
                                                              mom[c]);
      }
      gap[n * C + c] = static_cast<acc_t>(plane_sum / static_cast<double>(S));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Layout B: channels [cb, ce) of samples [n0, n1); x is channel-contiguous (stride(C) == 1), so
// a row (n, s) of the range is contiguous. Rows are swept in blocks of kRowBlock: for every
// vector of kSize channels, its accumulators are loaded from a small per-range array, updated
// with kRowBlock rows, and stored back; memory is read as kRowBlock sequential streams.
// Rows are strided (often by a multiple of 4 KiB), so a chunk would not stay in L1 for a second
// pass: a chunk is reduced in one pass on data shifted by a per-channel constant K, i.e.
// sum (x - K) and sum (x - K)^2. K is the channel's running mean from earlier chunks (the
// first row for the first chunk), so |mean - K| << std after the first chunk and the
// cancellation in sum (x - K)^2 - (sum (x - K))^2 / n stays harmless.
constexpr int64_t kRowBlock = 4;
constexpr int64_t kMaxChunkRows = 1024;  // rows per float accumulator before merging in float64

template <typename scalar_t, typename acc_t>
GCNPRUNE_ALWAYS_INLINE void reduce_channel_range(const scalar_t* x, int64_t n0, int64_t n1,
                                                 int64_t cb, int64_t ce, int64_t S, int64_t sN,
                                                 int64_t sS, int64_t C, acc_t* gap,
                                                 Moments* mom) {
  using V = typename Simd<acc_t>::V;
  using I = typename Simd<acc_t>::I;
  constexpr int64_t kVS = Simd<acc_t>::kSize;
  const int64_t width = ce - cb;
  const int64_t full = width / kVS;           // vectors with all lanes in range
  const int64_t tail = width - full * kVS;     // lanes of the last, partial vector
  const int64_t nvec = full + (tail > 0 ? 1 : 0);
  // std::vector<V> would not honour the 32-byte alignment of V (GCC drops the vector type's
  // attributes in template arguments), so carve aligned arrays out of a byte buffer.
  std::vector<unsigned char> storage(static_cast<size_t>(nvec) * (6 * sizeof(V) + sizeof(I)) +
                                     64);
  const uintptr_t base =
      (reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~static_cast<uintptr_t>(63);
  std::vector<double> gsum(static_cast<size_t>(width), 0.0);
  V* K = reinterpret_cast<V*>(base);  // shift
  V* P = K + nvec;      // sum (x - K) of the current sample (since the last chunk flush)
  V* Cs = P + nvec;     // sum (x - K) of the chunk
  V* Q = Cs + nvec;     // sum (x - K)^2 of the chunk
  V* A = Q + nvec;      // sum |x|
  V* M = A + nvec;      // max
  I* Z = reinterpret_cast<I*>(M + nvec);  // -(zero count)
  const V ninf = splat<acc_t>(-std::numeric_limits<acc_t>::infinity());
  for (int64_t j = 0; j < nvec; ++j) {
    P[j] = Cs[j] = Q[j] = A[j] = V{};
    M[j] = ninf;
    Z[j] = I{};
  }
  int64_t chunk_rows = 0;
  const double inv_s = 1.0 / static_cast<double>(S);

  for (int64_t n = n0; n < n1; ++n) {
    const scalar_t* sample = x + n * sN + cb;
    if (chunk_rows == 0) {  // a new chunk starts with this sample: pick its shift
      for (int64_t l = 0; l < width; ++l) {
        const Moments& m = mom[cb + l];
        double k = m.n > 0 ? m.mean : static_cast<double>(static_cast<acc_t>(sample[l]));
        if (!std::isfinite(k)) k = 0;
        K[l / kVS][l % kVS] = static_cast<acc_t>(k);
      }
    }
    for (int64_t s = 0; s < S; s += kRowBlock) {
      const int64_t rb = std::min(kRowBlock, S - s);
      const scalar_t* rows = sample + s * sS;
      for (int64_t j = 0; j < nvec; ++j) {
        const V k = K[j];
        V p = P[j], q = Q[j], a = A[j], m = M[j];
        I z = Z[j];
        const scalar_t* ptr = rows + j * kVS;
        const bool is_full = j < full;
        for (int64_t r = 0; r < rb; ++r, ptr += sS) {
          __builtin_prefetch(ptr + kRowBlock * sS);  // same channels, next row block
          const V v = is_full ? load_lanes<scalar_t, acc_t>(ptr)
                              : load_lanes_partial<scalar_t, acc_t>(ptr, tail);
          const V d = v - k;
          p += d;
          q += d * d;
          a += vabs<acc_t>(v);
          z += (v == 0);
          m = vmax<acc_t>(v, m);
        }
        P[j] = p;
        Q[j] = q;
        A[j] = a;
        M[j] = m;
        Z[j] = z;
      }
      chunk_rows += rb;
      const bool last_block = s + rb >= S;
      const bool flush = last_block ? (S > kMaxChunkRows || chunk_rows + S > kMaxChunkRows ||
                                       n + 1 == n1)
                                    : (S > kMaxChunkRows && chunk_rows >= kMaxChunkRows);
      if (last_block) {  // the sample ends: its GAP row
        acc_t* g = gap + n * C + cb;
        for (int64_t l = 0; l < width; ++l) {
          const double k = K[l / kVS][l % kVS];
          const double ps = gsum[l] + static_cast<double>(P[l / kVS][l % kVS]);
          g[l] = static_cast<acc_t>(k + ps * inv_s);
          gsum[l] = 0;
        }
      } else if (flush) {  // mid-sample flush: keep the sample's partial sum in float64
        for (int64_t l = 0; l < width; ++l) gsum[l] += static_cast<double>(P[l / kVS][l % kVS]);
      }
      if (last_block || flush) {
        for (int64_t j = 0; j < nvec; ++j) {
          Cs[j] += P[j];
          P[j] = V{};
        }
      }
      if (flush) {  // merge the chunk into the channel moments (float64, Chan)
        const double nrows = static_cast<double>(chunk_rows);
        const double inv_rows = 1.0 / nrows;
        for (int64_t l = 0; l < width; ++l) {
          const int64_t j = l / kVS, i = l % kVS;
          const double k = K[j][i];
          const double sd = Cs[j][i];
          const double m2 = static_cast<double>(Q[j][i]) - sd * sd * inv_rows;
          merge_chunk(mom[cb + l], nrows, sd + nrows * k, k + sd * inv_rows,
                      m2 > 0 ? m2 : (m2 == m2 ? 0.0 : m2), A[j][i],
                      -static_cast<double>(Z[j][i]), M[j][i]);
        }
        for (int64_t j = 0; j < nvec; ++j) {
          Cs[j] = Q[j] = A[j] = V{};
          M[j] = ninf;
          Z[j] = I{};
        }
        chunk_rows = 0;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
struct Plan {
  bool channel_contiguous;  // layout B
  int64_t N, C, S, sN, sC, sS;
  int64_t group;            // channels per group (layout B) or 1 (layout A)
  int64_t groups, block, nblocks;
};

// Tasks [begin, end) of the (sample block, channel group) grid; `mom` is [nblocks, C].
template <typename scalar_t>
GCNPRUNE_ALWAYS_INLINE void gap_stats_tasks_impl(const scalar_t* x, const Plan& pl,
                                                 int64_t begin, int64_t end,
                                                 typename AccType<scalar_t>::type* gap,
                                                 Moments* mom) {
  using acc_t = typename AccType<scalar_t>::type;
  for (int64_t t = begin; t < end;) {
    const int64_t b = t / pl.groups;
    const int64_t g0 = t % pl.groups;
    const int64_t g1 = std::min(pl.groups, g0 + (end - t));
    const int64_t n0 = b * pl.block, n1 = std::min(pl.N, n0 + pl.block);
    Moments* m = mom + b * pl.C;
    if (pl.channel_contiguous) {
      reduce_channel_range<scalar_t, acc_t>(x, n0, n1, g0 * pl.group,
                                            std::min(pl.C, g1 * pl.group), pl.S, pl.sN, pl.sS,
                                            pl.C, gap, m);
    } else {
      reduce_planes<scalar_t, acc_t>(x, n0, n1, g0, g1, pl.S, pl.sN, pl.sC, pl.C, gap, m);
    }
    t += g1 - g0;
  }
}

// One instantiation per ISA: everything it calls is force-inlined, so the whole loop nest is
// compiled for that ISA. (No lambdas in the hot path: a lambda body would not inherit the
// target attribute.) The AVX2 clone is only called when cpu::cpu_has_avx2().
template <typename scalar_t>
void gap_stats_tasks_base(const scalar_t* x, const Plan& pl, int64_t begin, int64_t end,
                          typename AccType<scalar_t>::type* gap, Moments* mom) {
  gap_stats_tasks_impl<scalar_t>(x, pl, begin, end, gap, mom);
}

#if GCNPRUNE_HAVE_AVX2_CLONE
template <typename scalar_t>
GCNPRUNE_TARGET_AVX2 void gap_stats_tasks_avx2(const scalar_t* x, const Plan& pl, int64_t begin,
                                               int64_t end, typename AccType<scalar_t>::type* gap,
                                               Moments* mom) {
  gap_stats_tasks_impl<scalar_t>(x, pl, begin, end, gap, mom);
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gap_stats_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "gap_stats (CPU kernel): x must be a CPU tensor");
  gap_detail::GapProblem p = gap_detail::prepare(x_in);
  if (p.empty) return p.outputs();
  const auto dtype = x_in.scalar_type();
  const auto acc_dtype = p.gap.scalar_type();
  const int64_t N = p.N, C = p.C, S = p.S;
  const at::Tensor& x = p.x;
  at::Tensor &gap = p.gap, &mean = p.mean, &var = p.var, &abs_mean = p.abs_mean,
             &zero_frac = p.zero_frac, &maxv = p.max;
  const bool layout_b = p.channel_contiguous;

  Plan pl;
  pl.channel_contiguous = layout_b;
  pl.N = N;
  pl.C = C;
  pl.S = S;
  pl.sN = x.stride(0);
  pl.sC = x.stride(1);
  pl.sS = x.stride(2);
  pl.group = 1;
  if (layout_b) {
    pl.group = 64;  // channels per task; a thread's consecutive tasks form one range
  }
  pl.groups = (C + pl.group - 1) / pl.group;
  // Split the samples only when there are too few channel groups for the threads.
  const int64_t threads = at::get_num_threads();
  int64_t nblocks = 1;
  if (pl.groups < 4 * threads) {
    nblocks = std::min<int64_t>(N, (4 * threads + pl.groups - 1) / pl.groups);
  }
  if (layout_b) {
    // Give each thread whole rows (its own samples): a thread then reads long contiguous
    // rows instead of interleaving half-rows with the other threads (measured 1.6x -> 1.1x of
    // x.sum() at [256, 1024, 16, 16] channels_last, 2 threads).
    nblocks = std::max(nblocks, std::min<int64_t>(N, threads));
  }
  pl.block = (N + nblocks - 1) / nblocks;
  pl.nblocks = (N + pl.block - 1) / pl.block;

  std::vector<Moments> mom(static_cast<size_t>(pl.nblocks * C));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gap_stats_cpu", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    acc_t* gp = gap.mutable_data_ptr<acc_t>();
    Moments* mp = mom.data();
    const int64_t work_per_task =
        std::max<int64_t>(1, pl.block * pl.S * (pl.channel_contiguous ? pl.group : 1));
    const int64_t grain = std::max<int64_t>(1, 32768 / work_per_task);
    const bool avx2 = cpu::cpu_has_avx2();
    at::parallel_for(0, pl.nblocks * pl.groups, grain, [&](int64_t begin, int64_t end) {
#if GCNPRUNE_HAVE_AVX2_CLONE
      if (avx2) {
        gap_stats_tasks_avx2<scalar_t>(xp, pl, begin, end, gp, mp);
        return;
      }
#endif
      (void)avx2;
      gap_stats_tasks_base<scalar_t>(xp, pl, begin, end, gp, mp);
    });
  });

  // Merge the sample blocks per channel and finish.
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "gap_stats_cpu_finish", [&] {
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* vp = var.mutable_data_ptr<scalar_t>();
    scalar_t* ap = abs_mean.mutable_data_ptr<scalar_t>();
    scalar_t* zp = zero_frac.mutable_data_ptr<scalar_t>();
    scalar_t* xp = maxv.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, C, 1024, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        Moments m = mom[c];
        for (int64_t b = 1; b < pl.nblocks; ++b) merge_moments(m, mom[b * C + c]);
        const double n = m.n;
        mp[c] = static_cast<scalar_t>(m.sum / n);
        const double v = m.m2 / n;
        vp[c] = static_cast<scalar_t>(std::isnan(v) ? v : std::max(v, 0.0));
        ap[c] = static_cast<scalar_t>(m.abs_sum / n);
        zp[c] = static_cast<scalar_t>(m.zeros / n);
        xp[c] = static_cast<scalar_t>(std::isnan(m.abs_sum)
                                          ? std::numeric_limits<double>::quiet_NaN()
                                          : m.max);
      }
    });
  });
  return {gap, mean, var, abs_mean, zero_frac, maxv};
}

}  // namespace

TORCH_LIBRARY_IMPL(gcnprune, CPU, m) { m.impl("gap_stats", &gap_stats_cpu); }

}  // namespace gcnprune
