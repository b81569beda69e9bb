// Host-side helpers of rescale_gather shared by the CPU and CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include <array>

#include "rescale_pixel.h"

namespace rescale_ext {

struct Normalization {
  std::array<float, 3> mean{0.f, 0.f, 0.f};
  std::array<float, 3> inv_std{1.f, 1.f, 1.f};
};

// Checks dtype, rank, contiguity and the scalar arguments; returns the output dtype.
at::ScalarType check_arguments(const at::Tensor& pixels, const at::Tensor& offsets,
                               const at::Tensor& sizes, const at::Tensor& ratios,
                               const at::Tensor& corners, int64_t patch,
                               std::optional<at::ScalarType> dtype);

// Reads mean/std (on the 0..255 scale), refusing wrong lengths and zero or non-finite std.
Normalization make_normalization(std::optional<c10::ArrayRef<double>> mean,
                                 std::optional<c10::ArrayRef<double>> std);

// Validates every index against `pixels_numel` and returns the per-patch descriptor table
// (CPU int64 [N, kDescFields]); metadata tensors must be on the CPU.
at::Tensor build_descriptors(int64_t pixels_numel, const at::Tensor& offsets, const at::Tensor& sizes,
                             const at::Tensor& ratios, const at::Tensor& corners, int64_t patch,
                             bool pinned);

// The kernel parameters (normalisation, rounding, layout) shared by the CUDA launch and its emulation.
GatherParams make_params(const Normalization& norm, bool quantize, bool channels_last);

OutDtype out_dtype_code(at::ScalarType dtype);

at::Tensor make_output(int64_t n, int64_t patch, at::ScalarType dtype, bool channels_last,
                       const at::TensorOptions& options);

}  // namespace rescale_ext
