// CUDA registration of rescale_gather: checks every argument on the host, ships the per-patch
// descriptor table to the device with one asynchronous copy from pinned memory, and launches the
// kernel once on the current stream. Metadata given on the CPU (the intended use) costs no sync;
// metadata already on the GPU is copied back once for the checks.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../rescale_coords.h"
#include "../rescale_gather.h"
#include "rescale_gather_cuda.h"

namespace rescale_ext {
namespace {

at::Tensor rescale_gather_cuda(const at::Tensor& pixels, const at::Tensor& offsets,
                               const at::Tensor& sizes, const at::Tensor& ratios,
                               const at::Tensor& corners, int64_t patch,
                               std::optional<c10::ArrayRef<double>> mean, std::optional<c10::ArrayRef<double>> std,
                               bool quantize, std::optional<at::ScalarType> dtype,
                               bool channels_last) {
  const at::ScalarType out_dtype =
      check_arguments(pixels, offsets, sizes, ratios, corners, patch, dtype);
  TORCH_CHECK(pixels.is_cuda(), "rescale_gather (CUDA kernel): pixels must be on a CUDA device, got ",
              pixels.device());
  TORCH_CHECK_VALUE(patch <= 46340, "rescale_gather: patch ", patch, " is too large");
  const Normalization norm = make_normalization(mean, std);
  const c10::cuda::CUDAGuard guard(pixels.device());
  const bool host_meta = offsets.is_cpu();
  const at::Tensor desc_host = build_descriptors(
      pixels.numel(), host_meta ? offsets : offsets.cpu(), host_meta ? sizes : sizes.cpu(),
      host_meta ? ratios : ratios.cpu(), host_meta ? corners : corners.cpu(), patch,
      /*pinned=*/true);
  const int64_t n = corners.size(0);
  at::Tensor out = make_output(n, patch, out_dtype, channels_last, pixels.options());
  if (n == 0) return out;
  const at::Tensor desc = desc_host.to(pixels.device(), /*non_blocking=*/true);

  const GatherParams params = make_params(norm, quantize, channels_last);
  const OutDtype code = out_dtype_code(out_dtype);
  launch_rescale_gather(pixels.data_ptr<uint8_t>(), desc.data_ptr<int64_t>(), n,
                        static_cast<int32_t>(patch), params, code, out.data_ptr(),
                        c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rescale_ext, CUDA, m) { m.impl("rescale_gather", &rescale_gather_cuda); }

}  // namespace rescale_ext
