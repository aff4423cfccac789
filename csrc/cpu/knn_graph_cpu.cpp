// CPU kernels of gcnprune::cosine_similarity, gcnprune::kl_similarity and gcnprune::knn_graph.
//
// Layout: f [C, B] (any float dtype, any strides) -> normalized rows xn [C, B] contiguous in the
// compute dtype (float32, or float64 for float64 input); for the KL similarity the standardized
// rows z, their softmax p [C, B] and a = rowsum(p * z) [C]. See common/knn_graph.h for semantics.
//
// knn_graph never materializes C x C. Within each segment it enumerates the upper-triangular
// tiles (I <= J) of T x T rows; a worker takes a tile from a shared counter, computes
// S = xn[I] xn[J]^T with one single-threaded GEMM (KL: S = P[I] Z[J]^T + Z[I] P[J]^T, two GEMMs,
// then exp(-max((a_i + a_j) - S_ij, 0) / 2) in place), and feeds every pair (i < j) to BOTH rows'
// running top-k (each pair is computed once, so the two directions of an edge carry the same
// value, and only half the GEMM work is done). Each worker keeps private top-k heaps for all rows
// (no locks); the heaps are merged per row at the end, then the graph is symmetrized and
// converted to CSR. Memory: O(threads * C * k + threads * T^2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <limits>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/knn_graph.h"

namespace gcnprune {
namespace {

// Fused version of knn_detail::normalized_rows (same formula, one read and one write of the
// data instead of ~10 ATen passes; matters when C is small and the GEMM cheap).
at::Tensor normalized_rows(const at::Tensor& f, bool center) {
  at::Tensor x = f.to(knn_detail::compute_type(f.scalar_type())).contiguous();
  const int64_t c = x.size(0), b = x.size(1);
  if (b == 0 || c == 0) return x;  // B = 0: every row has zero norm
  at::Tensor out = at::empty_like(x);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normalized_rows_cpu", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, c, std::max<int64_t>(1, 16384 / b), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> d(b);
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = in + r * b;
        scalar_t* dst = o + r * b;
        scalar_t mean = 0;
        if (center) {
          double sum = 0;
          for (int64_t e = 0; e < b; ++e) sum += row[e];
          mean = static_cast<scalar_t>(sum / static_cast<double>(b));
        }
        scalar_t lo = std::numeric_limits<scalar_t>::infinity(), hi = -lo, m = 0;
        bool nan = false;
        for (int64_t e = 0; e < b; ++e) {
          const scalar_t v = row[e] - mean;
          d[e] = v;
          lo = std::min(lo, v);
          hi = std::max(hi, v);
          m = std::max(m, std::abs(v));
          nan |= v != v;
        }
        if (nan || !std::isfinite(m)) {
          finite = false;
          continue;
        }
        // A constant row would otherwise keep rounding noise of its mean (see reference).
        if (m == 0 || (center && lo == hi)) {
          std::fill(dst, dst + b, scalar_t(0));
          continue;
        }
        double ss = 0;
        for (int64_t e = 0; e < b; ++e) {
          d[e] /= m;
          ss += static_cast<double>(d[e]) * d[e];
        }
        const scalar_t nrm = static_cast<scalar_t>(std::sqrt(ss));
        for (int64_t e = 0; e < b; ++e) dst[e] = d[e] / nrm;
      }
    });
  });
  TORCH_CHECK_VALUE(finite.load(), "f: holds NaN or infinite values");
  return out;
}

// knn_detail::kl_rows with the z-score fused (one read of each row instead of ~10 ATen passes);
// the softmax and a = rowsum(p * z) are ATen's (vectorized, and the reference's exact ops).
struct KlRows {
  at::Tensor z, p, a;
};

KlRows kl_rows(const at::Tensor& f) {
  at::Tensor x = f.to(knn_detail::compute_type(f.scalar_type())).contiguous();
  const int64_t c = x.size(0), b = x.size(1);
  if (b == 0 || c == 0) return {x, x, at::zeros({c}, x.options())};  // B = 0: every d = 0
  at::Tensor z = at::empty_like(x);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kl_rows_cpu", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* zo = z.data_ptr<scalar_t>();
    at::parallel_for(0, c, std::max<int64_t>(1, 16384 / b), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = in + r * b;
        scalar_t* zr = zo + r * b;
        scalar_t lo = std::numeric_limits<scalar_t>::infinity(), hi = -lo, m = 0;
        bool nan = false;
        for (int64_t e = 0; e < b; ++e) {
          const scalar_t v = row[e];
          lo = std::min(lo, v);
          hi = std::max(hi, v);
          m = std::max(m, std::abs(v));
          nan |= v != v;
        }
        if (nan || !std::isfinite(m)) {
          finite = false;
          continue;
        }
        if (lo == hi) {  // constant (or zero) row: z = 0, the uniform distribution
          std::fill(zr, zr + b, scalar_t(0));
          continue;
        }
        double sum = 0;  // scale by max |value| (no overflow below), center, standardize
        for (int64_t e = 0; e < b; ++e) {
          zr[e] = row[e] / m;
          sum += zr[e];
        }
        const scalar_t mean = static_cast<scalar_t>(sum / static_cast<double>(b));
        double ss = 0;
        for (int64_t e = 0; e < b; ++e) {
          zr[e] -= mean;
          ss += static_cast<double>(zr[e]) * zr[e];
        }
        const scalar_t rms = static_cast<scalar_t>(std::sqrt(ss / static_cast<double>(b)));
        if (rms > 0) {
          for (int64_t e = 0; e < b; ++e) zr[e] /= rms;
        }
      }
    });
  });
  TORCH_CHECK_VALUE(finite.load(), "f: holds NaN or infinite values");
  at::Tensor p = at::softmax(z, 1);
  return {z, p, (p * z).sum({1})};
}

constexpr int64_t kDefaultTileCpu = 512;

// (av, aj) ranks before (bv, bj): larger similarity first, ties to the lower column index.
template <typename scalar_t>
inline bool ranks_before(scalar_t av, int64_t aj, scalar_t bv, int64_t bj) {
  return av > bv || (av == bv && aj < bj);
}

// Running top-k of every row: a binary heap per row whose root is the WORST kept entry, so a
// candidate is rejected with one comparison against thr[r] (-inf until the heap is full).
template <typename scalar_t>
struct RowTopK {
  int64_t k = 0;
  std::vector<scalar_t> val;  // [C * k]
  std::vector<int64_t> idx;   // [C * k]
  std::vector<int64_t> cnt;   // [C] entries kept
  std::vector<scalar_t> thr;  // [C] root value once full, else -inf

  void init(int64_t rows, int64_t k_) {
    k = k_;
    val.resize(rows * k);
    idx.resize(rows * k);
    cnt.assign(rows, 0);
    thr.assign(rows, -std::numeric_limits<scalar_t>::infinity());
  }

  // Offer candidate (v, j) to row r; cheap callers pre-filter with v >= thr[r].
  void push(int64_t r, scalar_t v, int64_t j) {
    scalar_t* hv = val.data() + r * k;
    int64_t* hi = idx.data() + r * k;
    int64_t n = cnt[r];
    if (n < k) {  // sift up: a parent must rank after (be worse than) its children
      int64_t p = n;
      while (p > 0) {
        int64_t q = (p - 1) / 2;
        if (!ranks_before(hv[q], hi[q], v, j)) break;
        hv[p] = hv[q];
        hi[p] = hi[q];
        p = q;
      }
      hv[p] = v;
      hi[p] = j;
      cnt[r] = ++n;
      if (n == k) thr[r] = hv[0];
      return;
    }
    if (!ranks_before(v, j, hv[0], hi[0])) return;
    int64_t p = 0;  // replace the root, sift down
    while (true) {
      int64_t l = 2 * p + 1;
      if (l >= k) break;
      int64_t w = l;  // the worse child
      if (l + 1 < k && ranks_before(hv[l], hi[l], hv[l + 1], hi[l + 1])) w = l + 1;
      if (!ranks_before(v, j, hv[w], hi[w])) break;
      hv[p] = hv[w];
      hi[p] = hi[w];
      p = w;
    }
    hv[p] = v;
    hi[p] = j;
    thr[r] = hv[0];
  }
};

struct Tile {
  int64_t a0, ra, b0, rb;  // rows [a0, a0+ra) x columns [b0, b0+rb), a0 <= b0
};

// Feeds the pairs of one computed tile s [ra, rb] (row-major) to both rows' top-k.
template <typename scalar_t>
void scan_tile(const scalar_t* s, const Tile& t, RowTopK<scalar_t>& tk) {
  const bool diagonal = t.a0 == t.b0;
  scalar_t* thr_col = tk.thr.data() + t.b0;
  for (int64_t r = 0; r < t.ra; ++r) {
    const int64_t i = t.a0 + r;
    const scalar_t* row = s + r * t.rb;
    scalar_t thr_row = tk.thr[i];
    for (int64_t c = diagonal ? r + 1 : 0; c < t.rb; ++c) {
      const scalar_t v = row[c];
      // Rarely true once the heaps are full: one well-predicted branch per pair.
      if (v >= thr_row || v >= thr_col[c]) {
        const int64_t j = t.b0 + c;
        if (v >= thr_row) {
          tk.push(i, v, j);
          thr_row = tk.thr[i];
        }
        if (v >= thr_col[c]) tk.push(j, v, i);
      }
    }
  }
}

// Upper-triangular T x T tiles (I <= J) of every segment of at least 2 rows.
std::vector<Tile> upper_tiles(const std::vector<int64_t>& offs, int64_t tile) {
  std::vector<Tile> tiles;
  for (size_t g = 0; g + 1 < offs.size(); ++g) {
    const int64_t lo = offs[g], hi = offs[g + 1];
    if (hi - lo < 2) continue;
    for (int64_t a = lo; a < hi; a += tile) {
      for (int64_t b = a; b < hi; b += tile) {
        tiles.push_back({a, std::min(tile, hi - a), b, std::min(tile, hi - b)});
      }
    }
  }
  return tiles;
}

// The similarity tile of the cosine: s = xn[I] xn[J]^T.
struct CosineTile {
  const at::Tensor& xn;
  void operator()(at::Tensor& s, const Tile& tl) const {
    at::mm_out(s, xn.narrow(0, tl.a0, tl.ra), xn.narrow(0, tl.b0, tl.rb).t());
  }
};

// The similarity tile of the symmetric KL: s = P[I] Z[J]^T + Z[I] P[J]^T (s_ij = M_ij + M_ji),
// then s_ij = exp(-max((a_i + a_j) - s_ij, 0) / 2) (the order of operations of the reference).
template <typename scalar_t>
struct KlTile {
  const KlRows& kl;
  void operator()(at::Tensor& s, const Tile& tl) const {
    at::mm_out(s, kl.p.narrow(0, tl.a0, tl.ra), kl.z.narrow(0, tl.b0, tl.rb).t());
    s.addmm_(kl.z.narrow(0, tl.a0, tl.ra), kl.p.narrow(0, tl.b0, tl.rb).t());
    const scalar_t* a = kl.a.data_ptr<scalar_t>();
    const scalar_t* aj = a + tl.b0;
    scalar_t* sp = s.data_ptr<scalar_t>();
    for (int64_t r = 0; r < tl.ra; ++r) {
      const scalar_t ai = a[tl.a0 + r];
      scalar_t* row = sp + r * tl.rb;
      for (int64_t c = 0; c < tl.rb; ++c) {
        const scalar_t d = (ai + aj[c]) - row[c];
        row[c] = scalar_t(-0.5) * (d > scalar_t(0) ? d : scalar_t(0));
      }
    }
    at::exp_(s);  // ATen's vectorized exp (this file has no -march flags)
  }
};

// Runs fn(worker, tile, s) for every tile, s [ra, rb] row-major filled by compute(s, tile).
// Workers take tiles from a shared counter (load balance on a busy machine) and run
// single-threaded GEMMs (inside a parallel region ATen/MKL do not spawn more threads). Returns the
// worker count; init(worker) runs once per worker before its first tile.
template <typename scalar_t, typename Init, typename Compute, typename Fn>
int64_t run_upper_tiles(const at::TensorOptions& opts, const std::vector<Tile>& tiles,
                        int64_t tile, const Init& init, const Compute& compute, const Fn& fn,
                        int64_t workers) {
  std::atomic<int64_t> next{0};
  at::ThreadLocalState tls;  // inference mode etc. for the GEMMs run by the workers
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(tls);
    for (int64_t w = begin; w < end; ++w) {
      init(w);
      at::Tensor buf = at::empty({tile * tile}, opts);
      for (int64_t t = next.fetch_add(1); t < static_cast<int64_t>(tiles.size());
           t = next.fetch_add(1)) {
        const Tile& tl = tiles[t];
        at::Tensor s = buf.narrow(0, 0, tl.ra * tl.rb).view({tl.ra, tl.rb});
        compute(s, tl);
        fn(w, tl, static_cast<const scalar_t*>(s.data_ptr<scalar_t>()));
      }
    }
  });
  return workers;
}

int64_t worker_count(size_t tiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                static_cast<int64_t>(tiles)));
}

// One segment-aware pass: per-row sorted neighbour lists (best first) in nbr/nbv [C * kk] with
// counts deg [C].
// compute(s, tile) fills a tile of similarities (CosineTile, KlTile); opts: the compute dtype.
template <typename scalar_t, typename Compute>
void select_neighbours(int64_t c, const at::TensorOptions& opts, const Compute& compute,
                       const std::vector<int64_t>& offs, int64_t kk, int64_t tile,
                       std::vector<int64_t>& nbr, std::vector<scalar_t>& nbv,
                       std::vector<int64_t>& deg) {
  const std::vector<Tile> tiles = upper_tiles(offs, tile);
  const int64_t nt = worker_count(tiles.size());
  std::vector<RowTopK<scalar_t>> heaps(nt);
  run_upper_tiles<scalar_t>(
      opts, tiles, tile, [&](int64_t w) { heaps[w].init(c, kk); }, compute,
      [&](int64_t w, const Tile& tl, const scalar_t* s) { scan_tile<scalar_t>(s, tl, heaps[w]); },
      nt);
  // Merge the workers' heaps row by row: sorted best first, at most kk.
  nbr.assign(c * kk, 0);
  nbv.assign(c * kk, 0);
  deg.assign(c, 0);
  at::parallel_for(0, c, 256, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<scalar_t, int64_t>> cand;
    for (int64_t r = begin; r < end; ++r) {
      cand.clear();
      for (int64_t w = 0; w < nt; ++w) {
        const RowTopK<scalar_t>& tk = heaps[w];
        if (tk.k == 0) continue;  // worker got no tile (not initialized)
        for (int64_t e = 0; e < tk.cnt[r]; ++e) {
          cand.emplace_back(tk.val[r * kk + e], tk.idx[r * kk + e]);
        }
      }
      std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) {
        return ranks_before(a.first, a.second, b.first, b.second);
      });
      const int64_t n = std::min<int64_t>(kk, static_cast<int64_t>(cand.size()));
      for (int64_t e = 0; e < n; ++e) {
        nbv[r * kk + e] = cand[e].first;
        nbr[r * kk + e] = cand[e].second;
      }
      deg[r] = n;
    }
  });
}

// Writes tile s [ra, rb] to o[I, J] and, transposed, to o[J, I] (o [c, c] row-major).
template <typename scalar_t>
void write_tile_symmetric(scalar_t* o, int64_t c, const Tile& tl, const scalar_t* s) {
  for (int64_t r = 0; r < tl.ra; ++r) {
    std::copy(s + r * tl.rb, s + (r + 1) * tl.rb, o + (tl.a0 + r) * c + tl.b0);
  }
  constexpr int64_t kBlock = 32;  // transposed copy in cache-sized blocks
  for (int64_t r0 = 0; r0 < tl.ra; r0 += kBlock) {
    for (int64_t c0 = 0; c0 < tl.rb; c0 += kBlock) {
      const int64_t r1 = std::min(r0 + kBlock, tl.ra), c1 = std::min(c0 + kBlock, tl.rb);
      for (int64_t cc = c0; cc < c1; ++cc) {
        scalar_t* dst = o + (tl.b0 + cc) * c + tl.a0;
        for (int64_t r = r0; r < r1; ++r) {
          // Diagonal tiles: only the lower triangle comes from the transpose.
          if (tl.a0 != tl.b0 || r < cc) dst[r] = s[r * tl.rb + cc];
        }
      }
    }
  }
}

at::Tensor cosine_similarity_cpu(const at::Tensor& f, bool center) {
  knn_detail::check_features(f);
  at::Tensor xn = normalized_rows(f, center);
  const int64_t c = xn.size(0);
  at::Tensor out = at::empty({c, c}, xn.options());
  if (c == 0) return out;
  // Upper-triangular tiles only (half the flops of xn xn^T); each tile is written to [I, J]
  // and, transposed from the same buffer, to [J, I], so the result is exactly symmetric.
  const int64_t tile = knn_detail::tile_size(kDefaultTileCpu);
  const std::vector<Tile> tiles = upper_tiles({0, c}, tile);
  if (c == 1) {
    at::mm_out(out, xn, xn.t());
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "cosine_similarity_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    run_upper_tiles<scalar_t>(
        xn.options(), tiles, tile, [](int64_t) {}, CosineTile{xn},
        [&](int64_t, const Tile& tl, const scalar_t* s) {
          write_tile_symmetric<scalar_t>(o, c, tl, s);
        },
        worker_count(tiles.size()));
  });
  return out;
}

at::Tensor kl_similarity_cpu(const at::Tensor& f) {
  knn_detail::check_features(f);
  const KlRows kl = kl_rows(f);
  const int64_t c = kl.z.size(0);
  at::Tensor out = at::empty({c, c}, kl.z.options());
  if (c == 0) return out;
  if (c > 1) {  // upper-triangular tiles, mirrored: exactly symmetric
    const int64_t tile = knn_detail::tile_size(kDefaultTileCpu);
    const std::vector<Tile> tiles = upper_tiles({0, c}, tile);
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "kl_similarity_cpu", [&] {
      scalar_t* o = out.data_ptr<scalar_t>();
      run_upper_tiles<scalar_t>(
          kl.z.options(), tiles, tile, [](int64_t) {}, KlTile<scalar_t>{kl},
          [&](int64_t, const Tile& tl, const scalar_t* s) {
            write_tile_symmetric<scalar_t>(o, c, tl, s);
          },
          worker_count(tiles.size()));
    });
  }
  out.diagonal().fill_(1);  // d(i, i) = 0 exactly
  return out;
}

// kNN selection over the tiles of compute (CosineTile / KlTile), symmetrization and CSR.
template <typename scalar_t, typename Compute>
std::tuple<at::Tensor, at::Tensor, at::Tensor> knn_csr(int64_t c, const at::TensorOptions& opts,
                                                       const Compute& compute,
                                                       const std::vector<int64_t>& offs,
                                                       int64_t kk, at::Tensor indptr) {
  const int64_t tile = knn_detail::tile_size(kDefaultTileCpu);
  std::vector<int64_t> nbr, deg;
  std::vector<scalar_t> nbv;
  select_neighbours<scalar_t>(c, opts, compute, offs, kk, tile, nbr, nbv, deg);
  // Symmetrize: row r holds its own picks plus every j that picked r; then sort + dedupe.
  std::vector<int64_t> start(c + 1, 0);
  for (int64_t r = 0; r < c; ++r) {
    start[r + 1] += deg[r];
    for (int64_t e = 0; e < deg[r]; ++e) start[nbr[r * kk + e] + 1] += 1;
  }
  for (int64_t r = 0; r < c; ++r) start[r + 1] += start[r];
  std::vector<std::pair<int64_t, scalar_t>> edges(start[c]);
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t r = 0; r < c; ++r) {
    for (int64_t e = 0; e < deg[r]; ++e) {
      const int64_t j = nbr[r * kk + e];
      const scalar_t v = nbv[r * kk + e];
      edges[fill[r]++] = {j, v};
      edges[fill[j]++] = {r, v};
    }
  }
  std::vector<int64_t> uniq(c, 0);
  at::parallel_for(0, c, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      auto first = edges.begin() + start[r], last = edges.begin() + start[r + 1];
      std::sort(first, last, [](const auto& a, const auto& b) { return a.first < b.first; });
      int64_t n = 0;
      for (auto it = first; it != last; ++it) {
        if (n > 0 && (first + n - 1)->first == it->first) {
          // Same pair from both directions: identical values (each pair computed once).
          (first + n - 1)->second = std::max((first + n - 1)->second, it->second);
        } else {
          *(first + n) = *it;
          ++n;
        }
      }
      uniq[r] = n;
    }
  });
  int64_t* ip = indptr.data_ptr<int64_t>();
  for (int64_t r = 0; r < c; ++r) ip[r + 1] = ip[r] + uniq[r];
  at::Tensor indices = at::empty({ip[c]}, indptr.options());
  at::Tensor values = at::empty({ip[c]}, opts);
  int64_t* out_i = indices.data_ptr<int64_t>();
  scalar_t* out_v = values.data_ptr<scalar_t>();
  at::parallel_for(0, c, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t e = 0; e < uniq[r]; ++e) {
        const auto& ed = edges[start[r] + e];
        out_i[ip[r] + e] = ed.first;
        out_v[ip[r] + e] = std::max(ed.second, scalar_t(0));
      }
    }
  });
  return {indptr, indices, values};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> knn_graph_cpu(
    const at::Tensor& f, int64_t k, const std::optional<at::Tensor>& segments, bool center,
    std::string_view similarity) {
  knn_detail::check_features(f);
  knn_detail::check_k(k);
  const knn_detail::Similarity measure = knn_detail::parse_similarity(similarity);
  const int64_t c = f.size(0);
  std::vector<int64_t> offs = knn_detail::segment_offsets(segments, c, f);
  const int64_t max_len = knn_detail::max_segment_length(offs);
  const int64_t kk = knn_detail::effective_k(k, max_len);
  at::Tensor indptr = at::zeros({c + 1}, f.options().dtype(at::kLong));
  if (measure == knn_detail::Similarity::kKl) {  // center: no effect (rows are standardized)
    const KlRows kl = kl_rows(f);
    if (kk == 0) return {indptr, at::empty({0}, indptr.options()), at::empty({0}, kl.z.options())};
    std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
    AT_DISPATCH_FLOATING_TYPES(kl.z.scalar_type(), "knn_graph_kl_cpu", [&] {
      out = knn_csr<scalar_t>(c, kl.z.options(), KlTile<scalar_t>{kl}, offs, kk, indptr);
    });
    return out;
  }
  at::Tensor xn = normalized_rows(f, center);
  if (kk == 0) return {indptr, at::empty({0}, indptr.options()), at::empty({0}, xn.options())};
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(xn.scalar_type(), "knn_graph_cpu", [&] {
    out = knn_csr<scalar_t>(c, xn.options(), CosineTile{xn}, offs, kk, indptr);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gcnprune, CPU, m) {
  m.impl("cosine_similarity", &cosine_similarity_cpu);
  m.impl("kl_similarity", &kl_similarity_cpu);
  m.impl("knn_graph", &knn_graph_cpu);
}

}  // namespace gcnprune
