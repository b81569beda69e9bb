// Interface between the CUDA launcher (rescale_gather_cuda.cpp) and the kernel (.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../rescale_pixel.h"  // OutDtype, GatherParams

namespace rescale_ext {

// Launches ONE kernel for all n patches on `stream`; `desc` is a device int64 [n, kDescFields] table.
void launch_rescale_gather(const uint8_t* pixels, const int64_t* desc, int64_t n, int32_t patch,
                           const GatherParams& params, OutDtype dtype, void* out,
                           cudaStream_t stream);

}  // namespace rescale_ext
