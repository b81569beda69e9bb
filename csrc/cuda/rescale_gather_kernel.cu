// CUDA kernel of rescale_gather: one launch for all patches; each thread writes the three channels
// of one destination pixel. Plain CUDA headers only (the launcher lives in rescale_gather_cuda.cpp),
// so this file compiles in seconds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../rescale_coords.h"
#include "rescale_gather_cuda.h"

namespace rescale_ext {
namespace {

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename out_t>
__global__ void rescale_gather_kernel(const uint8_t* __restrict__ pixels,
                                      const int64_t* __restrict__ desc, int64_t n, int32_t patch,
                                      GatherParams params, out_t* __restrict__ out) {
  const int32_t plane = patch * patch;
  const int32_t pix = blockIdx.x * blockDim.x + threadIdx.x;
  if (pix >= plane) return;
  const int32_t y = pix / patch;
  const int32_t x = pix - y * patch;
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const int64_t* d = desc + i * kDescFields;
    const uint8_t* src = pixels + __ldg(d + kOffset);
    const int32_t h = static_cast<int32_t>(__ldg(d + kHeight));
    const int32_t w = static_cast<int32_t>(__ldg(d + kWidth));
    const int32_t p = static_cast<int32_t>(__ldg(d + kP));
    const int32_t q = static_cast<int32_t>(__ldg(d + kQ));
    const Tap<int32_t> ty = source_tap<int32_t>(static_cast<int32_t>(__ldg(d + kY0)) + y, p, q, h);
    const Tap<int32_t> tx = source_tap<int32_t>(static_cast<int32_t>(__ldg(d + kX0)) + x, p, q, w);
    const uint8_t* a = src + 3 * (ty.i0 * w + tx.i0);
    const uint8_t* b = src + 3 * (ty.i0 * w + tx.i1);
    const uint8_t* c = src + 3 * (ty.i1 * w + tx.i0);
    const uint8_t* e = src + 3 * (ty.i1 * w + tx.i1);
    const int32_t two_q = 2 * q;
    const int32_t den = two_q * two_q;
    const float inv_den = 1.0f / static_cast<float>(den);
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) {
      const int32_t num = blend(__ldg(a + ch), __ldg(b + ch), __ldg(c + ch), __ldg(e + ch), tx.w1,
                                ty.w1, two_q);
      float v = static_cast<float>(num) * inv_den;
      if (params.quantize) v = static_cast<float>(round_ratio(num, den, v));
      v = (v - params.mean[ch]) * params.inv_std[ch];
      const int64_t at = params.channels_last ? (i * plane + pix) * 3 + ch
                                              : (i * 3 + ch) * static_cast<int64_t>(plane) + pix;
      out[at] = from_float<out_t>(v);
    }
  }
}

}  // namespace

void launch_rescale_gather(const uint8_t* pixels, const int64_t* desc, int64_t n, int32_t patch,
                           const GatherParams& params, OutDtype dtype, void* out,
                           cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int32_t plane = patch * patch;
  const dim3 block(kThreads);
  const dim3 grid((plane + kThreads - 1) / kThreads,
                  static_cast<unsigned>(n < 65535 ? n : 65535));
  switch (dtype) {
    case OutDtype::kFloat32:
      rescale_gather_kernel<float><<<grid, block, 0, stream>>>(pixels, desc, n, patch, params,
                                                               static_cast<float*>(out));
      break;
    case OutDtype::kFloat16:
      rescale_gather_kernel<__half><<<grid, block, 0, stream>>>(pixels, desc, n, patch, params,
                                                                static_cast<__half*>(out));
      break;
    case OutDtype::kBFloat16:
      rescale_gather_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(
          pixels, desc, n, patch, params, static_cast<__nv_bfloat16*>(out));
      break;
  }
}

}  // namespace rescale_ext
