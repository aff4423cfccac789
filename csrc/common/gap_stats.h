// Shared by the CPU and CUDA kernels of gap_stats (csrc/cpu/gap_stats_cpu.cpp,
// csrc/cuda/gap_stats_cuda.cu): argument checks, output allocation, the empty-input rule and the
// layout decision. Header-only host code (ATen ops, any device).
//
// Semantics (mirrors gcnprune_fast/ops/reference/gap.py): x is viewed as [N, C, S]; outputs are
// float64 for float64 input, float32 otherwise; no elements (N, C or S == 0) -> NaN outputs.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <tuple>

namespace gcnprune {
namespace gap_detail {

using GapOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct GapProblem {
  at::Tensor x;                  // [N, C, S] view (or copy) of the input
  int64_t N = 0, C = 0, S = 0;
  bool channel_contiguous = false;  // kernels walk channels (stride 1) rather than planes
  bool empty = false;               // no elements: outputs already filled with NaN
  at::Tensor gap, mean, var, abs_mean, zero_frac, max;

  GapOutputs outputs() const { return {gap, mean, var, abs_mean, zero_frac, max}; }
};

inline GapProblem prepare(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() >= 2 && x_in.dim() <= 4,
              "gap_stats: x must have shape [N, C], [N, C, L] or [N, C, H, W], got ",
              x_in.sizes());
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "gap_stats: x must be float32, float16, bfloat16 or float64, got ", dtype);
  GapProblem p;
  p.N = x_in.size(0);
  p.C = x_in.size(1);
  // [N, C, S] view (a view for contiguous and channels_last NCHW: flatten(2) merges H, W).
  p.x = x_in.dim() == 2 ? x_in.unsqueeze(2) : x_in.dim() == 4 ? x_in.flatten(2) : x_in;
  p.S = p.x.size(2);
  auto opts = x_in.options().dtype(dtype == at::kDouble ? at::kDouble : at::kFloat);
  p.gap = at::empty({p.N, p.C}, opts);
  p.mean = at::empty({p.C}, opts);
  p.var = at::empty({p.C}, opts);
  p.abs_mean = at::empty({p.C}, opts);
  p.zero_frac = at::empty({p.C}, opts);
  p.max = at::empty({p.C}, opts);
  if (p.N == 0 || p.S == 0 || p.C == 0) {
    // No elements: GAP of empty planes is NaN, per-channel statistics are NaN.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (auto* t : {&p.gap, &p.mean, &p.var, &p.abs_mean, &p.zero_frac, &p.max}) t->fill_(nan);
    p.empty = true;
    return p;
  }
  const bool plane_contig = p.S == 1 || p.x.stride(2) == 1;
  const bool chan_contig = p.C == 1 || p.x.stride(1) == 1;
  if (chan_contig && (!plane_contig || p.S < 16)) {
    p.channel_contiguous = true;
  } else if (plane_contig) {
    p.channel_contiguous = false;
  } else if (p.S < 16) {  // neither: copy to channel-contiguous ([N, S, C] memory)
    p.x = p.x.transpose(1, 2).contiguous().transpose(1, 2);
    p.channel_contiguous = true;
  } else {
    p.x = p.x.contiguous();
    p.channel_contiguous = false;
  }
  return p;
}

}  // namespace gap_detail
}  // namespace gcnprune
