// Scaled dropout masks drawn in parallel from a counter-based generator.
//
// Why: a batch-64 training step draws ~12M dropout decisions; torch's CPU generator
// (mt19937) is serial and took ~6% of the step. Element k of a mask here is a function of
// (seed, k) alone, output k of the splitmix64 stream (Steele, Lea & Flood 2014, the
// generator behind Java's SplittableRandom; passes BigCrush): both cores fill disjoint
// ranges of one stream, and the result does not depend on the number of threads.
//
// The law is F.dropout's, as torch.rand(...) < 1 - p draws it: a uniform on the grid
// k * 2^-24 (float32; 2^-53 for float64), kept when below 1 - p (rounded to the dtype),
// kept entries scaled by 1 / (1 - p). The seed comes from torch's generator (Python side),
// so manual_seed and checkpointed RNG state reproduce the masks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace {

using at::Tensor;

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;  // splitmix64's increment

inline uint64_t splitmix64_output(uint64_t state) {
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fill the contiguous `out` with 0 or 1 / (1 - p): uniform u_k < 1 - p keeps element k.
template <typename T>
void fill_mask(T* out, int64_t n, double p, uint64_t seed) {
  constexpr int kBits = std::is_same_v<T, float> ? 24 : 53;  // torch.rand's resolution
  const T keep = static_cast<T>(1.0 - p);                   // the threshold, as torch rounds it
  // u = m * 2^-kBits < keep  <=>  m < keep * 2^kBits (exact: a power-of-two scaling)
  const uint64_t limit = static_cast<uint64_t>(
      std::ceil(static_cast<double>(keep) * static_cast<double>(uint64_t(1) << kBits)));
  const T scale = T(1) / keep;
  at::parallel_for(0, n, 1 << 14, [out, seed, limit, scale](int64_t lo, int64_t hi) {
    // locals, not the captures: with -fopenmp GCC would not vectorise through them
    T* __restrict o = out;
    const uint64_t s = seed, lim = limit;
    const T kept = scale;
    for (int64_t k = lo; k < hi; ++k) {
      const uint64_t m = splitmix64_output(s + (static_cast<uint64_t>(k) + 1) * kGamma) >>
                         (64 - kBits);
      o[k] = m < lim ? kept : T(0);
    }
  });
}

Tensor dropout_mask(at::IntArrayRef shape, double p, int64_t seed, at::ScalarType dtype) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "mrlfads dropout_mask: p=", p, " must be in [0, 1)");
  Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "mrlfads_dropout_mask", [&] {
    fill_mask<scalar_t>(out.mutable_data_ptr<scalar_t>(), out.numel(), p,
                        static_cast<uint64_t>(seed));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mrlfads_native, m) {
  m.def("dropout_mask(int[] shape, float p, int seed, ScalarType dtype) -> Tensor",
        &dropout_mask);
}
