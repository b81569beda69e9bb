// CUDA kernel of rescale_gather: one launch for all patches. The kernel is only thread-index
// arithmetic: each thread owns one destination pixel of a patch and strides over the patches; every
// value it computes comes from gather_pixel (csrc/rescale_pixel.h), which the CPU also executes in
// the emulated launch that the tests run. Plain CUDA headers only (the launcher lives in
// rescale_gather_cuda.cpp), so this file compiles in seconds.
#include <cuda_runtime.h>

#include <cstdint>

#include "../rescale_pixel.h"
#include "rescale_gather_cuda.h"

namespace rescale_ext {
namespace {

template <typename store_t>
__global__ void rescale_gather_kernel(const uint8_t* __restrict__ pixels,
                                      const int64_t* __restrict__ desc, int64_t n, int32_t patch,
                                      GatherParams params, OutDtype dtype, store_t* __restrict__ out) {
  const int32_t pix = blockIdx.x * blockDim.x + threadIdx.x;
  if (pix >= patch * patch) return;
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    gather_pixel<store_t>(pixels, desc + i * kDescFields, i, patch, pix, params, dtype, out);
  }
}

}  // namespace

void launch_rescale_gather(const uint8_t* pixels, const int64_t* desc, int64_t n, int32_t patch,
                           const GatherParams& params, OutDtype dtype, void* out,
                           cudaStream_t stream) {
  const LaunchGeometry g = launch_geometry(patch, n);
  const dim3 block(kThreadsPerBlock);
  const dim3 grid(static_cast<unsigned>(g.grid_x), static_cast<unsigned>(g.grid_y));
  if (dtype == OutDtype::kFloat32) {
    rescale_gather_kernel<float><<<grid, block, 0, stream>>>(pixels, desc, n, patch, params, dtype,
                                                             static_cast<float*>(out));
  } else {  // float16 and bfloat16: the bits come from encode<uint16_t>
    rescale_gather_kernel<uint16_t><<<grid, block, 0, stream>>>(pixels, desc, n, patch, params, dtype,
                                                                static_cast<uint16_t*>(out));
  }
}

}  // namespace rescale_ext
