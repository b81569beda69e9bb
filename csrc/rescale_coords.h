// Exact coordinate and blending arithmetic of bilinear rescaling, shared by the CPU and CUDA kernels.
//
// torch's F.interpolate(mode="bilinear", align_corners=False, antialias=False) maps destination pixel
// x_dst to x_src = (x_dst + 0.5) * p / q - 0.5 (src/dst = p/q). Multiplying by 2q gives an integer:
//     2q * x_src = (2 * x_dst + 1) * p - q
// so the lower tap is floor(num / 2q) and the weight of the upper tap is (num mod 2q) / 2q, exactly.
// A negative source coordinate is clamped to 0 (weight 0); the upper tap is clamped to the last
// row/column, as torch does. Because the weights are integers over 2q, patches whose corners are
// congruent mod q see bit-identical weights, and a rounded ("saved") value is computed exactly.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define RESCALE_HD __host__ __device__ __forceinline__
#else
#define RESCALE_HD inline
#endif

namespace rescale_ext {

// One row of the per-patch descriptor table handed to the kernels (int64, kDescFields per patch).
enum DescField : int {
  kOffset = 0,  // start of the window in `pixels`
  kHeight = 1,  // window height H
  kWidth = 2,   // window width W
  kP = 3,       // ratio numerator (reduced)
  kQ = 4,       // ratio denominator (reduced)
  kY0 = 5,      // patch corner row in destination pixels
  kX0 = 6,      // patch corner column in destination pixels
  kDescFields = 8
};

// Largest reduced denominator accepted: keeps the blend numerator 4 q^2 * 255 (< 2^30) inside int32;
// the rounding works in int64 here and, on the CPU kernel's vectorised path, through a remainder that
// stays small (see vertical_quantized in ops.cpp).
constexpr int64_t kMaxQ = 1024;
// Largest reduced numerator accepted (keeps coordinate numerators small; any real ratio is far below).
constexpr int64_t kMaxP = 1 << 20;

template <typename index_t>
struct Tap {
  index_t i0;  // lower source index
  index_t i1;  // upper source index (clamped to the last one)
  int32_t w1;  // weight of the upper tap, in units of 1 / (2q); the lower tap weighs 2q - w1
};

// Destination length of a source length n rescaled by src/dst = p/q.
RESCALE_HD int64_t dst_length(int64_t n, int64_t p, int64_t q) { return (n * q) / p; }

template <typename index_t>
RESCALE_HD Tap<index_t> source_tap(index_t dst, index_t p, index_t q, index_t src_len) {
  const index_t num = (2 * dst + 1) * p - q;  // 2q * x_src
  const index_t den = 2 * q;
  Tap<index_t> t;
  if (num <= 0) {
    t.i0 = 0;
    t.w1 = 0;
  } else {
    t.i0 = num / den;
    t.w1 = static_cast<int32_t>(num - t.i0 * den);
  }
  t.i1 = t.i0 < src_len - 1 ? t.i0 + 1 : t.i0;
  return t;
}

// Blend of four uint8 samples; the result is the exact value times 4 q^2 (fits int32 for q <= kMaxQ).
RESCALE_HD int32_t blend(int32_t a, int32_t b, int32_t c, int32_t d, int32_t wx1, int32_t wy1,
                         int32_t two_q) {
  const int32_t wx0 = two_q - wx1;
  const int32_t wy0 = two_q - wy1;
  return wy0 * (wx0 * a + wx1 * b) + wy1 * (wx0 * c + wx1 * d);
}

// Round num / den to the nearest integer, halves up, exactly; `approx` is a float estimate within +-1.
RESCALE_HD int32_t round_ratio(int32_t num, int32_t den, float approx) {
  int64_t k = static_cast<int64_t>(approx + 0.5f);
  const int64_t twice = 2 * static_cast<int64_t>(num) + den;  // round(num/den) = floor((2num+den)/(2den))
  const int64_t two_den = 2 * static_cast<int64_t>(den);
  if (k * two_den > twice) --k;
  if ((k + 1) * two_den <= twice) ++k;
  return static_cast<int32_t>(k);
}

}  // namespace rescale_ext
