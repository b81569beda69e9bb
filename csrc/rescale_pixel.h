// The per-pixel body of the CUDA kernel, as __host__ __device__ functions: taps, blend, exact
// rounding, normalisation, conversion to the output dtype and the output offset for both layouts.
// The CUDA kernel is only the thread-index arithmetic around `gather_pixel`; the CPU runs the same
// function through `emulate_launch` (ops.cpp), over the same grid, so every line of the GPU's
// arithmetic is executed by the tests on machines without a GPU.
#pragma once

#include <cstdint>
#include <cstring>

#include "rescale_coords.h"

#if defined(__CUDA_ARCH__)
#define RESCALE_LDG(ptr) __ldg(ptr)
// Explicitly rounded float operations: nvcc would otherwise contract a * b - c into one FMA, whose
// single rounding differs from the host's two; these keep device and host results bit-identical.
#define RESCALE_FMUL(a, b) __fmul_rn((a), (b))
#define RESCALE_FSUB(a, b) __fsub_rn((a), (b))
#else
#define RESCALE_LDG(ptr) (*(ptr))
#define RESCALE_FMUL(a, b) ((a) * (b))
#define RESCALE_FSUB(a, b) ((a) - (b))
#endif

namespace rescale_ext {

enum class OutDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct GatherParams {
  float mean[3];
  float inv_std[3];
  bool quantize;
  bool channels_last;
};

constexpr int32_t kThreadsPerBlock = 256;
constexpr int64_t kMaxGridY = 65535;

struct LaunchGeometry {
  int64_t grid_x;  // blocks over the pixels of one patch
  int64_t grid_y;  // blocks over patches; the kernel strides over the rest
};

// One thread per destination pixel of a patch (x) and a grid-stride loop over the patches (y).
RESCALE_HD LaunchGeometry launch_geometry(int32_t patch, int64_t n, int64_t max_grid_y = kMaxGridY) {
  const int64_t plane = static_cast<int64_t>(patch) * patch;
  LaunchGeometry g;
  g.grid_x = (plane + kThreadsPerBlock - 1) / kThreadsPerBlock;
  g.grid_y = n < max_grid_y ? n : max_grid_y;
  return g;
}

RESCALE_HD uint32_t float_bits(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// float -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN): __float2bfloat16_rn.
RESCALE_HD uint16_t float_to_bf16_bits(float v) {
  const uint32_t u = float_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// float -> IEEE half bits, round to nearest even, overflow to infinity, subnormals kept:
// __float2half_rn.
RESCALE_HD uint16_t float_to_half_bits(float v) {
  const uint32_t u = float_bits(v);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): zero
    const uint32_t e = a >> 23;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24: mantissa bits shifted out
    const uint32_t half_units = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    const uint32_t up = (rest > halfway || (rest == halfway && (half_units & 1u))) ? 1u : 0u;
    return static_cast<uint16_t>(sign | (half_units + up));
  }
  // normal: rebias the exponent (127 -> 15), keep 10 mantissa bits, round to nearest even; a carry
  // into the exponent is the correct result (up to infinity, excluded above).
  const uint32_t r = a - 0x38000000u;  // exponent - 112
  const uint32_t base = r >> 13;
  const uint32_t rest = r & 0x1fffu;
  const uint32_t up = (rest > 0x1000u || (rest == 0x1000u && (base & 1u))) ? 1u : 0u;
  return static_cast<uint16_t>(sign | (base + up));
}

// The value written for one element: float itself, or the bits of a 16-bit float.
template <typename store_t>
RESCALE_HD store_t encode(float v, OutDtype dtype);
template <>
RESCALE_HD float encode<float>(float v, OutDtype) { return v; }
template <>
RESCALE_HD uint16_t encode<uint16_t>(float v, OutDtype dtype) {
  return dtype == OutDtype::kBFloat16 ? float_to_bf16_bits(v) : float_to_half_bits(v);
}

// Offset of element (patch i, channel ch, pixel pix) in an [N, 3, patch, patch] output.
RESCALE_HD int64_t output_offset(int64_t i, int32_t ch, int32_t pix, int32_t plane, bool channels_last) {
  return channels_last ? (i * plane + pix) * 3 + ch : (i * 3 + ch) * static_cast<int64_t>(plane) + pix;
}

// The three channels of destination pixel `pix` (row-major within the patch) of patch `i`, whose
// descriptor row is `d` (kDescFields int64, already validated on the host).
template <typename store_t>
RESCALE_HD void gather_pixel(const uint8_t* __restrict__ pixels, const int64_t* __restrict__ d, int64_t i,
                             int32_t patch, int32_t pix, const GatherParams& params, OutDtype dtype,
                             store_t* __restrict__ out) {
  const int32_t plane = patch * patch;
  const int32_t y = pix / patch;
  const int32_t x = pix - y * patch;
  const uint8_t* src = pixels + RESCALE_LDG(d + kOffset);
  const int32_t h = static_cast<int32_t>(RESCALE_LDG(d + kHeight));
  const int32_t w = static_cast<int32_t>(RESCALE_LDG(d + kWidth));
  const int32_t p = static_cast<int32_t>(RESCALE_LDG(d + kP));
  const int32_t q = static_cast<int32_t>(RESCALE_LDG(d + kQ));
  const Tap<int32_t> ty = source_tap<int32_t>(static_cast<int32_t>(RESCALE_LDG(d + kY0)) + y, p, q, h);
  const Tap<int32_t> tx = source_tap<int32_t>(static_cast<int32_t>(RESCALE_LDG(d + kX0)) + x, p, q, w);
  const uint8_t* a = src + 3 * (static_cast<int64_t>(ty.i0) * w + tx.i0);
  const uint8_t* b = src + 3 * (static_cast<int64_t>(ty.i0) * w + tx.i1);
  const uint8_t* c = src + 3 * (static_cast<int64_t>(ty.i1) * w + tx.i0);
  const uint8_t* e = src + 3 * (static_cast<int64_t>(ty.i1) * w + tx.i1);
  const int32_t two_q = 2 * q;
  const int32_t den = two_q * two_q;  // <= 2^22 for q <= kMaxQ
  const float inv_den = 1.0f / static_cast<float>(den);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int ch = 0; ch < 3; ++ch) {
    const int32_t num = blend(RESCALE_LDG(a + ch), RESCALE_LDG(b + ch), RESCALE_LDG(c + ch),
                              RESCALE_LDG(e + ch), tx.w1, ty.w1, two_q);
    float v = RESCALE_FMUL(static_cast<float>(num), inv_den);
    if (params.quantize) v = static_cast<float>(round_ratio(num, den, v));
    v = RESCALE_FMUL(RESCALE_FSUB(v, params.mean[ch]), params.inv_std[ch]);
    out[output_offset(i, ch, pix, plane, params.channels_last)] = encode<store_t>(v, dtype);
  }
}

}  // namespace rescale_ext
