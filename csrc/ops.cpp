// rescale_ext: schema of the fused rescale + periodic patch gather op, its argument checks and the
// CPU kernel. The CUDA kernel is registered from csrc/cuda/ when the extension is built with CUDA.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "rescale_coords.h"
#include "rescale_gather.h"
#include "rescale_pixel.h"

extern "C" {
// Loads the library (and so its TORCH_LIBRARY registrations) on `import rescale_ext._C`; no pybind11.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace rescale_ext {

namespace {

void check_metadata(const at::Tensor& t, const char* name, int64_t dim, int64_t cols) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "rescale_gather: ", name, " must be int64, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim && (cols < 0 || t.size(-1) == cols), "rescale_gather: ", name,
                    " must have shape ", (dim == 1 ? "[B]" : (cols == 3 ? "[N, 3]" : "[B, 2]")),
                    ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "rescale_gather: ", name, " must be contiguous");
}

}  // namespace

at::ScalarType check_arguments(const at::Tensor& pixels, const at::Tensor& offsets,
                               const at::Tensor& sizes, const at::Tensor& ratios,
                               const at::Tensor& corners, int64_t patch,
                               std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_TYPE(pixels.scalar_type() == at::kByte, "rescale_gather: pixels must be uint8, got ",
                   pixels.scalar_type());
  TORCH_CHECK_VALUE(pixels.dim() == 1, "rescale_gather: pixels must be 1-D (packed HWC windows), got ",
                    pixels.dim(), " dimensions");
  TORCH_CHECK_VALUE(pixels.is_contiguous(), "rescale_gather: pixels must be contiguous");
  check_metadata(offsets, "offsets", 1, -1);
  check_metadata(sizes, "sizes", 2, 2);
  check_metadata(ratios, "ratios", 2, 2);
  check_metadata(corners, "corners", 2, 3);
  const int64_t b = offsets.size(0);
  TORCH_CHECK_VALUE(sizes.size(0) == b, "rescale_gather: sizes has ", sizes.size(0),
                    " rows but offsets has ", b, " windows");
  TORCH_CHECK_VALUE(ratios.size(0) == b, "rescale_gather: ratios has ", ratios.size(0),
                    " rows but offsets has ", b, " windows");
  const auto meta_device = offsets.device();
  for (const at::Tensor* t : {&sizes, &ratios, &corners}) {
    TORCH_CHECK(t->device() == meta_device,
                "rescale_gather: offsets, sizes, ratios and corners must be on one device, got ",
                meta_device, " and ", t->device());
  }
  TORCH_CHECK(meta_device.is_cpu() || meta_device == pixels.device(),
              "rescale_gather: offsets/sizes/ratios/corners must be on the CPU or on the device of "
              "pixels (", pixels.device(), "), got ", meta_device);
  TORCH_CHECK_VALUE(patch > 0, "rescale_gather: patch must be positive, got ", patch);
  const at::ScalarType out = dtype.value_or(at::kFloat);
  TORCH_CHECK_TYPE(out == at::kFloat || out == at::kHalf || out == at::kBFloat16,
                   "rescale_gather: dtype must be float32, float16 or bfloat16, got ", out);
  return out;
}

Normalization make_normalization(std::optional<c10::ArrayRef<double>> mean,
                                 std::optional<c10::ArrayRef<double>> std) {
  Normalization norm;
  if (mean.has_value()) {
    TORCH_CHECK_VALUE(mean->size() == 3, "rescale_gather: mean must have 3 values, got ",
                      mean->size());
    for (int c = 0; c < 3; ++c) {
      TORCH_CHECK_VALUE(std::isfinite((*mean)[c]), "rescale_gather: mean[", c,
                        "] must be finite, got ", (*mean)[c]);
      norm.mean[c] = static_cast<float>((*mean)[c]);
    }
  }
  if (std.has_value()) {
    TORCH_CHECK_VALUE(std->size() == 3, "rescale_gather: std must have 3 values, got ", std->size());
    for (int c = 0; c < 3; ++c) {
      const double s = (*std)[c];
      TORCH_CHECK_VALUE(std::isfinite(s) && s != 0.0, "rescale_gather: std[", c,
                        "] must be finite and non-zero, got ", s);
      norm.inv_std[c] = static_cast<float>(1.0 / s);
    }
  }
  return norm;
}

at::Tensor build_descriptors(int64_t pixels_numel, const at::Tensor& offsets, const at::Tensor& sizes,
                             const at::Tensor& ratios, const at::Tensor& corners, int64_t patch,
                             bool pinned) {
  TORCH_INTERNAL_ASSERT(offsets.is_cpu());
  const int64_t nwin = offsets.size(0);
  const int64_t n = corners.size(0);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* sz = sizes.data_ptr<int64_t>();
  const int64_t* rt = ratios.data_ptr<int64_t>();
  const int64_t* cr = corners.data_ptr<int64_t>();
  constexpr int64_t kMaxSide = int64_t(1) << 30;

  // Per window: reduced ratio and destination size, all checked before any pixel is read.
  std::vector<int64_t> win(nwin * 4);  // p, q, dst H, dst W
  for (int64_t b = 0; b < nwin; ++b) {
    const int64_t h = sz[2 * b], w = sz[2 * b + 1];
    int64_t p = rt[2 * b], q = rt[2 * b + 1];
    TORCH_CHECK_VALUE(h > 0 && w > 0 && h < kMaxSide && w < kMaxSide, "rescale_gather: sizes[", b,
                      "] = (", h, ", ", w, ") must be positive (and below 2^30)");
    TORCH_CHECK_VALUE(p > 0 && q > 0, "rescale_gather: ratios[", b, "] = (", p, ", ", q,
                      "): p and q must be positive");
    const int64_t g = std::gcd(p, q);
    p /= g;
    q /= g;
    TORCH_CHECK_VALUE(q <= kMaxQ && p <= kMaxP, "rescale_gather: ratios[", b, "] = ", p, "/", q,
                      " (reduced): q must be <= ", kMaxQ, " and p <= ", kMaxP);
    TORCH_CHECK_VALUE(h * w <= (int64_t(1) << 31) / 3, "rescale_gather: sizes[", b, "] = (", h, ", ",
                      w, "): window too large (more than 2^31 bytes)");
    const int64_t o = off[b];
    TORCH_CHECK_VALUE(o >= 0 && o <= pixels_numel && h * w * 3 <= pixels_numel - o,
                      "rescale_gather: window ", b, " (offsets[", b, "] = ", o, ", size ", h, "x", w,
                      "x3) runs past the end of pixels (", pixels_numel, " bytes)");
    const int64_t hd = dst_length(h, p, q), wd = dst_length(w, p, q);
    // Coordinate numerators (2 * dst + 1) * p must fit int32 for the CUDA kernel.
    TORCH_CHECK_VALUE((2 * std::max(hd, wd) + 1) * p < (int64_t(1) << 31), "rescale_gather: window ",
                      b, " of size ", h, "x", w, " at ratio ", p, "/", q, " is too large");
    win[4 * b] = p;
    win[4 * b + 1] = q;
    win[4 * b + 2] = hd;
    win[4 * b + 3] = wd;
  }

  at::Tensor desc = at::empty({n, kDescFields}, at::TensorOptions().dtype(at::kLong).pinned_memory(pinned));
  int64_t* d = desc.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = cr[3 * i], y0 = cr[3 * i + 1], x0 = cr[3 * i + 2];
    TORCH_CHECK_VALUE(b >= 0 && b < nwin, "rescale_gather: corners[", i, "] names window ", b,
                      ", but there are ", nwin, " windows");
    const int64_t hd = win[4 * b + 2], wd = win[4 * b + 3];
    TORCH_CHECK_VALUE(y0 >= 0 && x0 >= 0 && y0 <= hd - patch && x0 <= wd - patch,
                      "rescale_gather: corners[", i, "] = (", b, ", ", y0, ", ", x0, "): a ", patch,
                      "x", patch, " patch does not fit in the ", hd, "x", wd,
                      " destination image of window ", b, " (", sz[2 * b], "x", sz[2 * b + 1],
                      " at ratio ", win[4 * b], "/", win[4 * b + 1], ")");
    int64_t* row = d + i * kDescFields;
    row[kOffset] = off[b];
    row[kHeight] = sz[2 * b];
    row[kWidth] = sz[2 * b + 1];
    row[kP] = win[4 * b];
    row[kQ] = win[4 * b + 1];
    row[kY0] = y0;
    row[kX0] = x0;
    row[7] = 0;
  }
  return desc;
}

GatherParams make_params(const Normalization& norm, bool quantize, bool channels_last) {
  GatherParams params;
  for (int c = 0; c < 3; ++c) {
    params.mean[c] = norm.mean[c];
    params.inv_std[c] = norm.inv_std[c];
  }
  params.quantize = quantize;
  params.channels_last = channels_last;
  return params;
}

OutDtype out_dtype_code(at::ScalarType dtype) {
  return dtype == at::kFloat ? OutDtype::kFloat32 : dtype == at::kHalf ? OutDtype::kFloat16 : OutDtype::kBFloat16;
}

at::Tensor make_output(int64_t n, int64_t patch, at::ScalarType dtype, bool channels_last,
                       const at::TensorOptions& options) {
  return at::empty({n, 3, patch, patch}, options.dtype(dtype),
                   channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

namespace {

// Rows of one patch handled by one task: the horizontally blended source rows are cached across
// them (consecutive destination rows share source rows).
constexpr int64_t kRowBlock = 64;

#if defined(__GNUC__)
#define RESCALE_INLINE inline __attribute__((always_inline))
#else
#define RESCALE_INLINE inline
#endif

// The instruction sets the CPU kernel is compiled for. Each path is the same C++ (below) compiled
// with that target, plus hand-written gathers for the horizontal pass; the path is chosen once at
// load time from the CPU's flags (or RESCALE_EXT_ISA=scalar|avx2|avx512), and
// torch.ops.rescale_ext._set_cpu_isa switches it for tests.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx2Shuffle = 3 };

// Horizontal pass of one source row into three planes: h[c * patch + x] =
// (2q - wx) * row[col0[x] + c] + wx * row[col1[x] + c], the exact value times 2q.
// `x_begin` lets the vectorised versions hand their tail to this one.
RESCALE_INLINE void blend_row_scalar(const uint8_t* row, const int32_t* col0, const int32_t* col1,
                                     const int32_t* wcol, int32_t two_q, int64_t x_begin, int64_t patch,
                                     int32_t* h) {
  for (int64_t x = x_begin; x < patch; ++x) {
    const uint8_t* a = row + col0[x];
    const uint8_t* b = row + col1[x];
    const int32_t w1 = wcol[x], w0 = two_q - w1;
    h[x] = w0 * a[0] + w1 * b[0];
    h[patch + x] = w0 * a[1] + w1 * b[1];
    h[2 * patch + x] = w0 * a[2] + w1 * b[2];
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RESCALE_EXT_X86 1
#define RESCALE_TARGET_AVX2 __attribute__((target("avx2,fma,bmi,bmi2,popcnt,f16c")))
#define RESCALE_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx512vbmi,avx2,fma,bmi,bmi2,popcnt,f16c")))

// AVX2: eight destination pixels at a time; each tap is one 4-byte gather (3 channels + 1 spare
// byte). A gather is only issued while the spare byte still lies inside the window (`safe` bytes
// from `row`), so nothing is ever read past the window; the rest goes to the scalar loop.
// (Not inlined: blend_row<kIsa>, compiled for the baseline, calls it; the per-row call costs nothing.)
RESCALE_TARGET_AVX2 void blend_row_avx2(const uint8_t* row, int64_t safe, const int32_t* col0,
                                                       const int32_t* col1, const int32_t* wcol, int32_t two_q,
                                                       int64_t patch, int32_t* h) {
  const __m256i mask = _mm256_set1_epi32(0xFF);
  const __m256i twoq = _mm256_set1_epi32(two_q);
  int64_t x = 0;
  for (; x + 8 <= patch && col1[x + 7] + 4 <= safe; x += 8) {
    const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col0 + x));
    const __m256i i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col1 + x));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wcol + x));
    const __m256i w0 = _mm256_sub_epi32(twoq, w1);
    const __m256i va = _mm256_i32gather_epi32(reinterpret_cast<const int*>(row), i0, 1);
    const __m256i vb = _mm256_i32gather_epi32(reinterpret_cast<const int*>(row), i1, 1);
    for (int c = 0; c < 3; ++c) {
      const __m256i a = _mm256_and_si256(_mm256_srli_epi32(va, 8 * c), mask);
      const __m256i b = _mm256_and_si256(_mm256_srli_epi32(vb, 8 * c), mask);
      const __m256i r = _mm256_add_epi32(_mm256_mullo_epi32(w0, a), _mm256_mullo_epi32(w1, b));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + c * patch + x), r);
    }
  }
  blend_row_scalar(row, col0, col1, wcol, two_q, x, patch, h);
}

// The (w0, w1) int16 pairs of n destination pixels as vpmaddwd takes them: w0 | w1 << 16.
inline void pack_weight_pairs(const int32_t* wcol, int32_t two_q, int n, int32_t* out) {
  for (int j = 0; j < n; ++j) out[j] = (two_q - wcol[j]) | (wcol[j] << 16);
}

// AVX2 without gathers (avx2shuf), for CPUs that run vpgatherdd as microcode (AMD): the AVX-512
// path's idea with in-lane byte shuffles. A group is 8 destination pixels, 4 per 128-bit lane; each
// lane loads the 32 bytes from its first pixel's left tap (two 16-byte loads, `lo` and `hi` registers)
// and, per channel, two vpshufb pick the pixels' (a, 0, b, 0) byte pairs out of them (an index with
// its top bit set gives 0, so the two shuffles are OR'ed); one vpmaddwd with the (w0, w1) pairs gives
// w0 * a + w1 * b in int32, exact. A lane whose 4 pixels' taps span more than 32 bytes (shrinking by
// more than about 2.9), or whose loads would pass the `safe` bytes of the window, ends the vector loop
// and the scalar loop takes the rest.
struct ShuffleTables {
  static constexpr int kGroup = 8;
  int64_t groups = 0;                 // leading groups that fit the tables
  std::vector<int32_t> base;          // [group][lane] byte offset of the lane's window in the row
  std::vector<uint8_t> index;         // [group][channel][lo, hi][32] vpshufb indices
  std::vector<int32_t> weights;       // [group][8] (w0 | w1 << 16)

  void build(const int32_t* col0, const int32_t* col1, const int32_t* wcol, int32_t two_q, int64_t patch) {
    const int64_t n = patch / kGroup;
    base.resize(2 * n);
    index.resize(n * 3 * 2 * 32);
    weights.resize(n * kGroup);
    groups = 0;
    for (int64_t g = 0; g < n; ++g) {
      const int64_t x0 = g * kGroup;
      bool fits = true;
      for (int lane = 0; lane < 2; ++lane) {
        const int64_t first = x0 + 4 * lane;
        base[2 * g + lane] = col0[first];
        fits = fits && col1[first + 3] + 3 - col0[first] <= 32;
      }
      if (!fits) break;
      for (int c = 0; c < 3; ++c) {
        uint8_t* lo = index.data() + ((g * 3 + c) * 2) * 32;
        uint8_t* hi = lo + 32;
        for (int lane = 0; lane < 2; ++lane) {
          const int32_t b0 = base[2 * g + lane];
          for (int j = 0; j < 4; ++j) {
            const int64_t x = x0 + 4 * lane + j;
            const int32_t taps[2] = {col0[x] + c - b0, col1[x] + c - b0};
            for (int t = 0; t < 2; ++t) {
              const int k = 16 * lane + 4 * j + 2 * t;  // byte of the pair in the lane's output
              lo[k] = taps[t] < 16 ? static_cast<uint8_t>(taps[t]) : 0x80;
              hi[k] = taps[t] >= 16 ? static_cast<uint8_t>(taps[t] - 16) : 0x80;
              lo[k + 1] = hi[k + 1] = 0x80;  // the high byte of each 16-bit value is 0
            }
          }
        }
      }
      pack_weight_pairs(wcol + x0, two_q, kGroup, weights.data() + g * kGroup);
      groups = g + 1;
    }
  }
};

RESCALE_TARGET_AVX2 void blend_row_avx2_shuffle(const uint8_t* row, int64_t safe, const ShuffleTables& t,
                                                const int32_t* col0, const int32_t* col1, const int32_t* wcol,
                                                int32_t two_q, int64_t patch, int32_t* h) {
  int64_t g = 0;
  for (; g < t.groups; ++g) {
    const int64_t b0 = t.base[2 * g], b1 = t.base[2 * g + 1];
    if (b1 + 32 > safe || b0 + 32 > safe) break;  // b1 >= b0 except for odd tap orders: check both
    const __m256i lo = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(row + b1),
                                           reinterpret_cast<const __m128i*>(row + b0));
    const __m256i hi = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(row + b1 + 16),
                                           reinterpret_cast<const __m128i*>(row + b0 + 16));
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.weights.data() + g * ShuffleTables::kGroup));
    const uint8_t* idx = t.index.data() + g * 3 * 2 * 32;
    const int64_t x = g * ShuffleTables::kGroup;
    for (int c = 0; c < 3; ++c) {
      const __m256i il = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + c * 64));
      const __m256i ih = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + c * 64 + 32));
      const __m256i pairs = _mm256_or_si256(_mm256_shuffle_epi8(lo, il), _mm256_shuffle_epi8(hi, ih));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + c * patch + x), _mm256_madd_epi16(pairs, w));
    }
  }
  blend_row_scalar(row, col0, col1, wcol, two_q, g * ShuffleTables::kGroup, patch, h);
}

// AVX-512 (with VBMI): no gathers. The column taps are the same for every row of a patch, so for each
// group of 16 destination pixels a table is built once per patch (ByteTables): the byte offset of
// the group's first source pixel and, per channel, a byte-permutation index that picks, for each
// pixel, its two source bytes (a, b) out of 128 bytes loaded from that offset. One vpermt2b per
// channel places them as 16-bit pairs (a, 0, b, 0) and one vpmaddwd with the weight pairs (w0, w1)
// gives w0 * a + w1 * b in int32, exact (a, b <= 255, w <= 2q <= 2048 fit int16). The loads are masked
// to the `safe` bytes of the window (masked-off bytes are never read). A group whose taps span more
// than 128 bytes (shrinking by more than about 2.5) goes to the scalar loop.
struct ByteTables {
  static constexpr int kGroup = 16;
  int64_t groups = 0;                 // leading groups that fit the table
  std::vector<int32_t> base;          // byte offset of each group's window in the row
  std::vector<uint8_t> index;         // [group][channel][64] vpermt2b indices
  std::vector<int32_t> weights;       // [group][16] (w0 | w1 << 16)

  void build(const int32_t* col0, const int32_t* col1, const int32_t* wcol, int32_t two_q, int64_t patch) {
    const int64_t n = patch / kGroup;
    base.resize(n);
    index.resize(n * 3 * 64);
    weights.resize(n * kGroup);
    groups = 0;
    for (int64_t g = 0; g < n; ++g) {
      const int64_t x0 = g * kGroup;
      const int32_t b0 = col0[x0];
      if (col1[x0 + kGroup - 1] + 2 - b0 >= 128) break;  // taps too far apart for two registers
      base[g] = b0;
      for (int c = 0; c < 3; ++c) {
        uint8_t* idx = index.data() + (g * 3 + c) * 64;
        for (int j = 0; j < kGroup; ++j) {
          idx[4 * j] = static_cast<uint8_t>(col0[x0 + j] + c - b0);
          idx[4 * j + 1] = 0;  // zeroed by the mask
          idx[4 * j + 2] = static_cast<uint8_t>(col1[x0 + j] + c - b0);
          idx[4 * j + 3] = 0;
        }
      }
      pack_weight_pairs(wcol + x0, two_q, kGroup, weights.data() + g * kGroup);
      groups = g + 1;
    }
  }
};

RESCALE_TARGET_AVX512 void blend_row_avx512(const uint8_t* row, int64_t safe, const ByteTables& t,
                                            const int32_t* col0, const int32_t* col1, const int32_t* wcol,
                                            int32_t two_q, int64_t patch, int32_t* h) {
  constexpr __mmask64 kEven = 0x5555555555555555ULL;  // keep bytes 0 and 2 of every dword
  int64_t g = 0;
  for (; g < t.groups; ++g) {
    const int64_t off = t.base[g];
    const int64_t avail = safe - off;  // readable bytes from the group's window start
    if (avail < 4) break;
    const __mmask64 m_lo = avail >= 64 ? ~__mmask64(0) : _bzhi_u64(~0ULL, static_cast<unsigned>(avail));
    const __mmask64 m_hi = avail >= 128 ? ~__mmask64(0)
                                        : avail <= 64 ? __mmask64(0)
                                                      : _bzhi_u64(~0ULL, static_cast<unsigned>(avail - 64));
    const __m512i lo = _mm512_maskz_loadu_epi8(m_lo, row + off);
    const __m512i hi = _mm512_maskz_loadu_epi8(m_hi, row + off + 64);
    const __m512i w = _mm512_loadu_si512(t.weights.data() + g * ByteTables::kGroup);
    const uint8_t* idx = t.index.data() + g * 3 * 64;
    const int64_t x = g * ByteTables::kGroup;
    for (int c = 0; c < 3; ++c) {
      const __m512i pairs = _mm512_maskz_permutex2var_epi8(kEven, lo, _mm512_loadu_si512(idx + c * 64), hi);
      _mm512_storeu_si512(h + c * patch + x, _mm512_madd_epi16(pairs, w));
    }
  }
  blend_row_scalar(row, col0, col1, wcol, two_q, g * ByteTables::kGroup, patch, h);
}
#endif

template <Isa kIsa>
RESCALE_INLINE void blend_row(const uint8_t* row, int64_t safe, const void* tables, const int32_t* col0,
                              const int32_t* col1, const int32_t* wcol, int32_t two_q, int64_t patch, int32_t* h) {
#ifdef RESCALE_EXT_X86
  if constexpr (kIsa == Isa::kAvx512) {
    return blend_row_avx512(row, safe, *static_cast<const ByteTables*>(tables), col0, col1, wcol, two_q, patch, h);
  }
  if constexpr (kIsa == Isa::kAvx2) return blend_row_avx2(row, safe, col0, col1, wcol, two_q, patch, h);
  if constexpr (kIsa == Isa::kAvx2Shuffle) {
    return blend_row_avx2_shuffle(row, safe, *static_cast<const ShuffleTables*>(tables), col0, col1, wcol, two_q,
                                  patch, h);
  }
#endif
  blend_row_scalar(row, col0, col1, wcol, two_q, 0, patch, h);
}

// Vertical pass with exact rounding (halves up), branch-free in int32 so that it vectorises (at the
// width of the ISA it is compiled into). The same rounding as round_ratio (rescale_coords.h, used by
// the CUDA kernel and its emulation), rewritten for int32 lanes: instead of comparing r * 2den with
// 2num + den (2^31 at q = 1024, r = 255: overflow), it corrects the estimate with the remainder
// num - r * den, whose magnitude stays below 2 den. Bounds for q <= kMaxQ = 1024: den = 4q^2 <= 2^22,
// num <= 255 den < 2^30, r <= 256 so r * den <= 2^30, |2 rem| + den < 2^24.
RESCALE_INLINE void vertical_quantized(const int32_t* h0, const int32_t* h1, int32_t wy0, int32_t wy1, int32_t den,
                                       float inv_den, float scale, float bias, int64_t len, float* dst) {
  for (int64_t k = 0; k < len; ++k) {
    const int32_t num = wy0 * h0[k] + wy1 * h1[k];
    int32_t r = static_cast<int32_t>(static_cast<float>(num) * inv_den + 0.5f);  // within +-1
    int32_t rem = num - r * den;
    const int32_t down = static_cast<int32_t>(2 * rem + den < 0);  // r * 2den > 2num + den
    r -= down;
    rem += down * den;
    r += static_cast<int32_t>(2 * rem - den >= 0);  // (r + 1) * 2den <= 2num + den
    dst[k] = static_cast<float>(r) * scale + bias;
  }
}

// Vertical pass of one channel plane: exact value times 4q^2 -> (rounded) -> normalised float.
// The CUDA kernel blends the four taps at once (gather_pixel); here the two passes are separable so
// that a blended source row serves every destination row that needs it. The integer value is the
// same; the float normalisation is folded into the weights (fw0, fw1), so float results may differ
// from the GPU's in the last bit (the tests compare within the dtype's rounding, exactly when
// quantized without normalisation).
template <bool kQuantize>
RESCALE_INLINE void vertical_pass(const int32_t* h0, const int32_t* h1, int32_t wy1, int32_t two_q, float scale,
                                  float bias, int64_t len, float* dst) {
  const int32_t wy0 = two_q - wy1;
  const int32_t den = two_q * two_q;
  const float inv_den = 1.0f / static_cast<float>(den);
  if constexpr (kQuantize) {
    vertical_quantized(h0, h1, wy0, wy1, den, inv_den, scale, bias, len, dst);
  } else {
    const float fw0 = static_cast<float>(wy0) * inv_den * scale;
    const float fw1 = static_cast<float>(wy1) * inv_den * scale;
    for (int64_t k = 0; k < len; ++k) {  // vectorises: h values are exact in float (< 2^24)
      dst[k] = fw0 * static_cast<float>(h0[k]) + fw1 * static_cast<float>(h1[k]) + bias;
    }
  }
}

struct Scratch {
  std::vector<int32_t> col0, col1, wcol, hbuf;
  std::vector<float> tmp;
#ifdef RESCALE_EXT_X86
  ByteTables tables;
  ShuffleTables shuffles;
#endif
  explicit Scratch(int64_t patch)
      : col0(patch), col1(patch), wcol(patch), hbuf(2 * 3 * patch), tmp(3 * patch) {}
};

struct GatherJob {
  const uint8_t* pixels;
  const int64_t* desc;
  int64_t patch;
  float scale[3];
  float bias[3];
  bool channels_last;
  void* out;
};

// Units [begin, end) (a unit: up to kRowBlock rows of one patch), compiled for one ISA.
template <Isa kIsa, typename out_t, bool kQuantize>
RESCALE_INLINE void gather_units(const GatherJob& job, int64_t begin, int64_t end, Scratch& s) {
  const int64_t patch = job.patch;
  const int64_t plane = patch * patch;
  const int64_t blocks = (patch + kRowBlock - 1) / kRowBlock;
  const int64_t len = 3 * patch;
  out_t* out = static_cast<out_t*>(job.out);
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t i = unit / blocks;
    const int64_t y_begin = (unit - i * blocks) * kRowBlock;
    const int64_t y_end = std::min(patch, y_begin + kRowBlock);
    const int64_t* d = job.desc + i * kDescFields;
    const int64_t h = d[kHeight], w = d[kWidth], p = d[kP], q = d[kQ];
    const int32_t two_q = static_cast<int32_t>(2 * q);
    for (int64_t x = 0; x < patch; ++x) {
      const Tap<int64_t> t = source_tap<int64_t>(d[kX0] + x, p, q, w);
      s.col0[x] = static_cast<int32_t>(3 * t.i0);
      s.col1[x] = static_cast<int32_t>(3 * t.i1);
      s.wcol[x] = t.w1;
    }
    const void* tables = nullptr;
#ifdef RESCALE_EXT_X86
    if constexpr (kIsa == Isa::kAvx512) {
      s.tables.build(s.col0.data(), s.col1.data(), s.wcol.data(), two_q, patch);
      tables = &s.tables;
    }
    if constexpr (kIsa == Isa::kAvx2Shuffle) {
      s.shuffles.build(s.col0.data(), s.col1.data(), s.wcol.data(), two_q, patch);
      tables = &s.shuffles;
    }
#endif
    const uint8_t* src = job.pixels + d[kOffset];
    int64_t cached[2] = {-1, -1};  // source row held by each half of hbuf
    for (int64_t y = y_begin; y < y_end; ++y) {
      const Tap<int64_t> ty = source_tap<int64_t>(d[kY0] + y, p, q, h);
      // Keep the slot that already holds a needed row; refill the other one.
      const int32_t* rows[2];
      const int64_t want[2] = {ty.i0, ty.i1};
      for (int r = 0; r < 2; ++r) {
        int slot = cached[0] == want[r] ? 0 : (cached[1] == want[r] ? 1 : -1);
        if (slot < 0) {
          slot = (cached[0] == want[1 - r]) ? 1 : 0;
          blend_row<kIsa>(src + want[r] * w * 3, (h - want[r]) * w * 3, tables, s.col0.data(), s.col1.data(),
                          s.wcol.data(), two_q, patch, s.hbuf.data() + slot * len);
          cached[slot] = want[r];
        }
        rows[r] = s.hbuf.data() + slot * len;
      }
      if constexpr (std::is_same_v<out_t, float>) {
        if (!job.channels_last) {  // float32 NCHW: the vertical pass writes the output rows directly
          for (int c = 0; c < 3; ++c) {
            vertical_pass<kQuantize>(rows[0] + c * patch, rows[1] + c * patch, ty.w1, two_q, job.scale[c],
                                     job.bias[c], patch, out + (i * 3 + c) * plane + y * patch);
          }
          continue;
        }
      }
      float* tmp = s.tmp.data();
      for (int c = 0; c < 3; ++c) {
        vertical_pass<kQuantize>(rows[0] + c * patch, rows[1] + c * patch, ty.w1, two_q, job.scale[c],
                                 job.bias[c], patch, tmp + c * patch);
      }
      if (job.channels_last) {
        out_t* o = out + (i * plane + y * patch) * 3;
        for (int64_t x = 0; x < patch; ++x) {
          o[3 * x] = static_cast<out_t>(tmp[x]);
          o[3 * x + 1] = static_cast<out_t>(tmp[patch + x]);
          o[3 * x + 2] = static_cast<out_t>(tmp[2 * patch + x]);
        }
      } else {
        for (int c = 0; c < 3; ++c) {
          out_t* o = out + (i * 3 + c) * plane + y * patch;
          const float* t = tmp + c * patch;
          for (int64_t x = 0; x < patch; ++x) o[x] = static_cast<out_t>(t[x]);
        }
      }
    }
  }
}

// One entry point per ISA: the whole unit loop (and everything inlined into it) is compiled with
// that target, so the vertical pass and the output conversion vectorise at its width too.
template <typename out_t, bool kQuantize>
void gather_units_scalar(const GatherJob& job, int64_t begin, int64_t end, Scratch& s) {
  gather_units<Isa::kScalar, out_t, kQuantize>(job, begin, end, s);
}
#ifdef RESCALE_EXT_X86
template <typename out_t, bool kQuantize>
RESCALE_TARGET_AVX2 void gather_units_avx2(const GatherJob& job, int64_t begin, int64_t end, Scratch& s) {
  gather_units<Isa::kAvx2, out_t, kQuantize>(job, begin, end, s);
}
template <typename out_t, bool kQuantize>
RESCALE_TARGET_AVX2 void gather_units_avx2_shuffle(const GatherJob& job, int64_t begin, int64_t end, Scratch& s) {
  gather_units<Isa::kAvx2Shuffle, out_t, kQuantize>(job, begin, end, s);
}
template <typename out_t, bool kQuantize>
RESCALE_TARGET_AVX512 void gather_units_avx512(const GatherJob& job, int64_t begin, int64_t end, Scratch& s) {
  gather_units<Isa::kAvx512, out_t, kQuantize>(job, begin, end, s);
}
#endif

bool isa_supported(Isa isa) {
#ifdef RESCALE_EXT_X86
  if (isa == Isa::kAvx512) {  // Ice Lake / Zen 4 and later (VBMI for the byte permutes)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  }
  if (isa == Isa::kAvx2 || isa == Isa::kAvx2Shuffle) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  if (isa != Isa::kScalar) return false;
#endif
  return true;
}

const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : isa == Isa::kAvx2Shuffle ? "avx2shuf" : "scalar";
}

bool parse_isa(const std::string& name, Isa* isa) {
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx2Shuffle, Isa::kAvx512}) {
    if (name == isa_name(i)) {
      *isa = i;
      return true;
    }
  }
  return false;
}

// The best path the CPU has, or the one RESCALE_EXT_ISA names (if the CPU has it). AMD cores run
// vpgatherdd as microcode (on an AMD EPYC, Zen 4, the AVX2 gather path measured 0.8x the scalar one),
// so AMD CPUs without the AVX-512 path take the AVX2 path without gathers (avx2shuf); Intel's AVX2
// CPUs keep the gathers.
Isa best_isa() {
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
#ifdef RESCALE_EXT_X86
  if (isa_supported(Isa::kAvx2)) return __builtin_cpu_is("amd") ? Isa::kAvx2Shuffle : Isa::kAvx2;
#endif
  return Isa::kScalar;
}

Isa initial_isa() {
  const Isa best = best_isa();
  const char* env = std::getenv("RESCALE_EXT_ISA");
  if (env != nullptr && *env != '\0') {
    Isa want;
    if (!parse_isa(env, &want) || !isa_supported(want)) {
      std::fprintf(stderr, "rescale_ext: RESCALE_EXT_ISA=%s is not scalar/avx2/avx2shuf/avx512 or this CPU lacks it; using %s\n",
                   env, isa_name(best));
      return best;
    }
    return want;
  }
  return best;
}

std::atomic<int> g_isa{static_cast<int>(initial_isa())};

template <typename out_t, bool kQuantize>
void gather_cpu(const uint8_t* pixels, const int64_t* desc, int64_t n, int64_t patch,
                const Normalization& norm, bool channels_last, out_t* out) {
  const int64_t blocks = (patch + kRowBlock - 1) / kRowBlock;
  GatherJob job{pixels, desc, patch, {}, {}, channels_last, out};
  for (int c = 0; c < 3; ++c) {
    job.scale[c] = norm.inv_std[c];
    job.bias[c] = -norm.mean[c] * norm.inv_std[c];
  }
  using Fn = void (*)(const GatherJob&, int64_t, int64_t, Scratch&);
  Fn fn = &gather_units_scalar<out_t, kQuantize>;
#ifdef RESCALE_EXT_X86
  const Isa isa = static_cast<Isa>(g_isa.load());
  if (isa == Isa::kAvx512) fn = &gather_units_avx512<out_t, kQuantize>;
  if (isa == Isa::kAvx2) fn = &gather_units_avx2<out_t, kQuantize>;
  if (isa == Isa::kAvx2Shuffle) fn = &gather_units_avx2_shuffle<out_t, kQuantize>;
#endif
  at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(patch);
    fn(job, begin, end, scratch);
  });
}

template <typename out_t>
void gather_cpu_dispatch(const uint8_t* pixels, const int64_t* desc, int64_t n, int64_t patch,
                         const Normalization& norm, bool quantize, bool channels_last, out_t* out) {
  if (quantize) {
    gather_cpu<out_t, true>(pixels, desc, n, patch, norm, channels_last, out);
  } else {
    gather_cpu<out_t, false>(pixels, desc, n, patch, norm, channels_last, out);
  }
}

at::Tensor rescale_gather_cpu(const at::Tensor& pixels, const at::Tensor& offsets,
                              const at::Tensor& sizes, const at::Tensor& ratios,
                              const at::Tensor& corners, int64_t patch,
                              std::optional<c10::ArrayRef<double>> mean, std::optional<c10::ArrayRef<double>> std,
                              bool quantize, std::optional<at::ScalarType> dtype, bool channels_last) {
  const at::ScalarType out_dtype =
      check_arguments(pixels, offsets, sizes, ratios, corners, patch, dtype);
  TORCH_CHECK(pixels.is_cpu(), "rescale_gather (CPU kernel): pixels must be on the CPU, got ",
              pixels.device());
  const Normalization norm = make_normalization(mean, std);
  const at::Tensor desc =
      build_descriptors(pixels.numel(), offsets, sizes, ratios, corners, patch, /*pinned=*/false);
  const int64_t n = corners.size(0);
  at::Tensor out = make_output(n, patch, out_dtype, channels_last, pixels.options());
  if (n == 0) return out;
  const uint8_t* src = pixels.data_ptr<uint8_t>();
  const int64_t* d = desc.data_ptr<int64_t>();
  switch (out_dtype) {
    case at::kFloat:
      gather_cpu_dispatch<float>(src, d, n, patch, norm, quantize, channels_last, out.data_ptr<float>());
      break;
    case at::kHalf:
      gather_cpu_dispatch<c10::Half>(src, d, n, patch, norm, quantize, channels_last,
                            out.data_ptr<c10::Half>());
      break;
    default:
      gather_cpu_dispatch<c10::BFloat16>(src, d, n, patch, norm, quantize, channels_last,
                                out.data_ptr<c10::BFloat16>());
  }
  return out;
}

// The CUDA kernel's launch, executed on the CPU: the same grid (blockIdx.x/y, threadIdx.x, the
// grid-stride loop over patches) around the same gather_pixel. `grid_y` replaces the kernel's
// gridDim.y (<= 0: what the real launch would use) so that tests make the loop stride. Serial and
// slow; for tests only.
template <typename store_t>
void emulate_launch(const uint8_t* pixels, const int64_t* desc, int64_t n, int32_t patch,
                    const GatherParams& params, OutDtype dtype, int64_t grid_y, store_t* out) {
  const LaunchGeometry g = launch_geometry(patch, n, grid_y > 0 ? grid_y : kMaxGridY);
  const int32_t plane = patch * patch;
  for (int64_t block_y = 0; block_y < g.grid_y; ++block_y) {
    for (int64_t block_x = 0; block_x < g.grid_x; ++block_x) {
      for (int32_t thread_x = 0; thread_x < kThreadsPerBlock; ++thread_x) {
        const int32_t pix = static_cast<int32_t>(block_x * kThreadsPerBlock + thread_x);
        if (pix >= plane) continue;  // the kernel's early return
        for (int64_t i = block_y; i < n; i += g.grid_y) {
          gather_pixel<store_t>(pixels, desc + i * kDescFields, i, patch, pix, params, dtype, out);
        }
      }
    }
  }
}

at::Tensor rescale_gather_emulated(const at::Tensor& pixels, const at::Tensor& offsets,
                                   const at::Tensor& sizes, const at::Tensor& ratios,
                                   const at::Tensor& corners, int64_t patch,
                                   std::optional<c10::ArrayRef<double>> mean,
                                   std::optional<c10::ArrayRef<double>> std, bool quantize,
                                   std::optional<at::ScalarType> dtype, bool channels_last,
                                   int64_t grid_y) {
  const at::ScalarType out_dtype = check_arguments(pixels, offsets, sizes, ratios, corners, patch, dtype);
  TORCH_CHECK(pixels.is_cpu(), "_rescale_gather_emulated: pixels must be on the CPU");
  TORCH_CHECK_VALUE(patch <= 46340, "rescale_gather: patch ", patch, " is too large");
  const GatherParams params = make_params(make_normalization(mean, std), quantize, channels_last);
  const at::Tensor desc =
      build_descriptors(pixels.numel(), offsets, sizes, ratios, corners, patch, /*pinned=*/false);
  const int64_t n = corners.size(0);
  at::Tensor out = make_output(n, patch, out_dtype, channels_last, pixels.options());
  if (n == 0) return out;
  const OutDtype code = out_dtype_code(out_dtype);
  if (code == OutDtype::kFloat32) {
    emulate_launch<float>(pixels.data_ptr<uint8_t>(), desc.data_ptr<int64_t>(), n, static_cast<int32_t>(patch),
                          params, code, grid_y, out.data_ptr<float>());
  } else {
    emulate_launch<uint16_t>(pixels.data_ptr<uint8_t>(), desc.data_ptr<int64_t>(), n,
                             static_cast<int32_t>(patch), params, code, grid_y,
                             static_cast<uint16_t*>(out.data_ptr()));
  }
  return out;
}

std::string cpu_isa() { return isa_name(static_cast<Isa>(g_isa.load())); }

std::string set_cpu_isa(std::string name) {
  Isa isa;
  TORCH_CHECK_VALUE(parse_isa(name, &isa), "_set_cpu_isa: scalar, avx2, avx2shuf or avx512, got '", name, "'");
  TORCH_CHECK_VALUE(isa_supported(isa), "_set_cpu_isa: this CPU (or build) has no ", name, " path");
  g_isa.store(static_cast<int>(isa));
  return name;
}

bool built_with_cuda() {
#ifdef RESCALE_EXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(rescale_ext, m) {
  m.def(
      "rescale_gather(Tensor pixels, Tensor offsets, Tensor sizes, Tensor ratios, Tensor corners, "
      "int patch, float[]? mean=None, float[]? std=None, bool quantize=False, "
      "ScalarType? dtype=None, bool channels_last=False) -> Tensor");
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  // The CPU kernel's instruction-set path (scalar, avx2, avx2shuf, avx512), chosen at load time.
  m.def("cpu_isa() -> str", &cpu_isa);
  // Tests and benchmarks only: switch the CPU kernel's path (refused if the CPU lacks it).
  m.def("_set_cpu_isa(str name) -> str", &set_cpu_isa);
  // Tests only: the CUDA kernel's body and grid, executed on the CPU.
  m.def(
      "_rescale_gather_emulated(Tensor pixels, Tensor offsets, Tensor sizes, Tensor ratios, "
      "Tensor corners, int patch, float[]? mean=None, float[]? std=None, bool quantize=False, "
      "ScalarType? dtype=None, bool channels_last=False, int grid_y=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(rescale_ext, CPU, m) {
  m.impl("rescale_gather", &rescale_gather_cpu);
  m.impl("_rescale_gather_emulated", &rescale_gather_emulated);
}

}  // namespace rescale_ext
