// Fused local relation kernel for the CPU: appearance logits, the softmax over the k x k
// window and the aggregation of each group's m channels in one pass per output row tile.
// Nothing of size k^2 * H'W' (let alone C * k^2 * H'W') is ever written to memory: per
// thread, a zero-padded copy of a block of rows of one group's m input planes and of its
// key plane, and the k^2 x TILE numerators of the tile being computed (a few kilobytes,
// cache resident). Tasks are (image, group, block of rows), handed out dynamically.
//
// Registered as dispatcher ops (lrprof_fused::relation, lrprof_fused::relation_backward)
// so that lrprof's counter sees them by name; their fake (meta) implementations and the
// autograd formula that ties the two together are registered from Python.
//
//   relation(x (B,C,H,W), query (B,G,H',W'), key (B,G,H,W), prior (G,k*k), k, m, stride, phi)
//     -> y (B,C,H',W'),  y[c,p'] = sum_o softmax_o(phi(q[g,p'], key[g,p'+o]) + prior[g,o]) x[c,p'+o]
//   relation_backward(grad_y, x, query, key, prior, k, m, stride, phi)
//     -> (grad_x, grad_query, grad_key, grad_prior); recomputes the softmax (nothing saved).
//
// Window positions outside the image are excluded from the softmax (weight exactly 0).
// Channel c belongs to group c / m; the last group is smaller when m does not divide C.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

enum Phi { SQDIFF = 0, ABSDIFF = 1, MUL = 2 };

int phi_code(c10::string_view phi) {
  if (phi == "sqdiff") return SQDIFF;
  if (phi == "absdiff") return ABSDIFF;
  if (phi == "mul") return MUL;
  TORCH_CHECK(false, "phi must be sqdiff, absdiff or mul, got ", std::string(phi));
}

// 2^t, branch-free so that loops over it vectorise: t = n + f with n an integer (read from
// the bits of t + 1.5 * 2^23) and |f| <= 1/2, a polynomial for 2^f (fitted on Chebyshev
// nodes, degree 6 in float: ~1e-7 relative; Taylor to degree 12 in double: ~3e-16),
// scaled by 2^n through the exponent bits. t is clamped to [-127, 128] ([-1023, 1024]):
// at the low end the scale's bits are all zero and the result is exactly 0 (so a masked,
// -inf logit gets weight exactly 0), at the high end they are infinity's.
inline float exp2_clamped(float t) {
  t = t > -127.0f ? t : -127.0f;
  t = t < 128.0f ? t : 128.0f;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float shifted = t + magic;
  const float f = t - (shifted - magic);
  float p = 0.00015469732170458883f;
  p = p * f + 0.0013400432653725147f;
  p = p * f + 0.00961802527308464f;
  p = p * f + 0.05550327152013779f;
  p = p * f + 0.24022650718688965f;
  p = p * f + 0.6931471824645996f;
  p = p * f + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits - 0x4B400000 + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double exp2_clamped(double t) {
  t = t > -1023.0 ? t : -1023.0;
  t = t < 1024.0 ? t : 1024.0;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double shifted = t + magic;
  const double f = t - (shifted - magic);
  // (ln 2)^i / i!, i = 12 .. 1, then 1
  double p = 2.5678435993488196e-11;
  p = p * f + 4.44553827187081e-10;
  p = p * f + 7.054911620801121e-09;
  p = p * f + 1.0178086009239696e-07;
  p = p * f + 1.3215486790144305e-06;
  p = p * f + 1.5252733804059838e-05;
  p = p * f + 0.00015403530393381606;
  p = p * f + 0.0013333558146428441;
  p = p * f + 0.009618129107628477;
  p = p * f + 0.055504108664821576;
  p = p * f + 0.2402265069591007;
  p = p * f + 0.6931471805599453;
  p = p * f + 1.0;
  int64_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits - 0x4338000000000000LL + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
constexpr T log2e() {
  return T(1.4426950408889634);
}

// A window's exponentials are taken relative to its centre's logit (always inside the
// image) in one sweep; a sum at or above this limit means some logit exceeded the centre's
// by too much for that, and the tile is redone relative to the true maximum.
template <typename T>
constexpr T sum_limit() {
  return sizeof(T) == 4 ? T(1.2676506e30) : T(1e300);  // 2^100 in float
}

template <typename T, int PHI>
inline T compose(T q, T key) {
  if constexpr (PHI == SQDIFF) {
    const T d = q - key;
    return -(d * d);
  } else if constexpr (PHI == ABSDIFF) {
    return -std::abs(q - key);
  } else {
    return q * key;
  }
}

// Sizes of one call, and of the padded planes its tasks work on.
struct Shape {
  int64_t B, C, H, W, G, Ho, Wo, k, r, m, s, K2;
  int64_t tiles;      // output tiles per row
  int64_t Wq;         // a padded row holds s phases of Wq columns: padded column pc is at
  int64_t Wp;         //   (pc % s) * Wq + pc / s, so stride-s windows read contiguous lanes;
  int64_t colof[64];  //   Wp = s * Wq; colof[dj] is window column dj's offset in a row
};

template <int TILE>
Shape make_shape(const at::Tensor& x, const at::Tensor& query, int64_t k, int64_t m, int64_t s) {
  Shape sh{};
  sh.B = x.size(0);
  sh.C = x.size(1);
  sh.H = x.size(2);
  sh.W = x.size(3);
  sh.G = query.size(1);
  sh.Ho = query.size(2);
  sh.Wo = query.size(3);
  sh.k = k;
  sh.r = k / 2;
  sh.m = m;
  sh.s = s;
  sh.K2 = k * k;
  sh.tiles = (sh.Wo + TILE - 1) / TILE;
  // every tile's window columns, and every image column (for the backward's copy out)
  const int64_t columns = std::max((sh.tiles * TILE - 1) * s + k, sh.W + sh.r);
  const int64_t phase = std::max((columns + s - 1) / s, sh.tiles * TILE + (k - 1) / s);
  sh.Wq = (phase + 15) / 16 * 16;  // rows and phases start on 64-byte lines
  sh.Wp = s * sh.Wq;
  for (int64_t dj = 0; dj < k; ++dj) sh.colof[dj] = (dj % s) * sh.Wq + dj / s;
  return sh;
}

// Rows [row0, row0 + Hp) of a (H, W) plane, columns shifted by r and split into the s
// phases of the padded layout (see Shape), zeros outside the image.
template <typename T>
void pad_plane(const T* src, const Shape& sh, int64_t row0, int64_t Hp, T* dst) {
  for (int64_t pr = 0; pr < Hp; ++pr) {
    T* d = dst + pr * sh.Wp;
    const int64_t y = row0 + pr;
    if (y < 0 || y >= sh.H) {
      std::fill(d, d + sh.Wp, T(0));
      continue;
    }
    const T* row = src + y * sh.W;
    if (sh.s == 1) {
      const int64_t n = std::min(sh.W, sh.Wp - sh.r);
      std::fill(d, d + sh.r, T(0));
      std::memcpy(d + sh.r, row, n * sizeof(T));
      std::fill(d + sh.r + n, d + sh.Wp, T(0));
      continue;
    }
    for (int64_t phase = 0; phase < sh.s; ++phase) {  // padded column idx * s + phase
      T* out = d + phase * sh.Wq;
      // image columns idx * s + phase - r in [0, W) for idx in [lo, hi): a strided copy
      const int64_t off = phase - sh.r;
      const int64_t lo = std::min<int64_t>(sh.Wq, std::max<int64_t>(0, (-off + sh.s - 1) / sh.s));
      const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(sh.Wq, (sh.W - off + sh.s - 1) / sh.s));
      std::fill(out, out + lo, T(0));
      const T* in = row + off;
      if (sh.s == 2) {  // the stem's stride: a constant stride the compiler vectorises
        for (int64_t idx = lo; idx < hi; ++idx) out[idx] = in[idx * 2];
      } else {
        for (int64_t idx = lo; idx < hi; ++idx) out[idx] = in[idx * sh.s];
      }
      std::fill(out + hi, out + sh.Wq, T(0));
    }
  }
}

// The image part of a padded plane (padded row 0 = image row -r) back to a (H, W) plane.
template <typename T>
void unpad_plane(const T* src, const Shape& sh, int64_t Hp, T* dst) {
  for (int64_t y = 0; y < sh.H; ++y) {
    T* d = dst + y * sh.W;
    const int64_t pr = y + sh.r;
    if (pr >= Hp) {
      std::fill(d, d + sh.W, T(0));
      continue;
    }
    const T* row = src + pr * sh.Wp;
    if (sh.s == 1) {
      const int64_t n = std::min(sh.W, sh.Wp - sh.r);
      std::memcpy(d, row + sh.r, n * sizeof(T));
      std::fill(d + n, d + sh.W, T(0));
      continue;
    }
    for (int64_t phase = 0; phase < sh.s; ++phase) {  // image column idx * s + phase - r
      const T* in = row + phase * sh.Wq;
      for (int64_t idx = 0; idx < sh.Wq; ++idx) {
        const int64_t x = idx * sh.s + phase - sh.r;
        if (x >= 0 && x < sh.W) d[x] = in[idx];
      }
    }
  }
}

// What depends on the output column only, computed once per call: per tile, the -inf bias
// of window columns outside the image, which lanes are real outputs (1) or padding (0),
// and whether the tile is interior (no bias to add).
template <typename T, int TILE>
struct ColumnMasks {
  std::vector<T> bias;   // tiles x k x TILE
  std::vector<T> valid;  // the same as a bit mask: all ones where the bias is 0, else 0
  std::vector<T> lane;   // tiles x TILE
  std::vector<char> interior;

  explicit ColumnMasks(const Shape& sh)
      : bias(sh.tiles * sh.k * TILE), valid(sh.tiles * sh.k * TILE), lane(sh.tiles * TILE), interior(sh.tiles, 1) {
    const T inf = std::numeric_limits<T>::infinity();
    for (int64_t t = 0; t < sh.tiles; ++t) {
      for (int jj = 0; jj < TILE; ++jj) {
        const int64_t j = t * TILE + jj;
        lane[t * TILE + jj] = j < sh.Wo ? T(1) : T(0);
        for (int64_t dj = 0; dj < sh.k; ++dj) {
          const int64_t xin = j * sh.s + dj - sh.r;
          // padding lanes keep finite logits (their weights are zeroed by `lane`)
          const bool ok = (xin >= 0 && xin < sh.W) || j >= sh.Wo;
          bias[(t * sh.k + dj) * TILE + jj] = ok ? T(0) : -inf;
          std::memset(&valid[(t * sh.k + dj) * TILE + jj], ok ? 0xFF : 0, sizeof(T));
          if (!ok) interior[t] = 0;
        }
      }
    }
  }
};

// The window rows [lo, hi) of output row i that fall inside the image.
struct Rows {
  int64_t lo, hi;
};

inline Rows rows_inside(const Shape& sh, int64_t i) {
  const int64_t top = i * sh.s - sh.r;  // image row of window row 0
  return {std::max<int64_t>(0, -top), std::min<int64_t>(sh.k, sh.H - top)};
}

// One window position's logits for the tile's lanes.
template <typename T, int PHI, int TILE, bool BORDER>
inline void logits(const T* __restrict__ kr, const T* __restrict__ qv, T pr, const T* __restrict__ bias,
                   T* __restrict__ l) {
#pragma omp simd
  for (int jj = 0; jj < TILE; ++jj) {
    T v = compose<T, PHI>(qv[jj], kr[jj]) + pr;
    if constexpr (BORDER) v += bias[jj];
    l[jj] = v;
  }
}

// The tile's numerators again, relative to the true maximum logit of each lane: two sweeps
// (logits and their max, then the exponentials). Returns the sums in `sum`.
template <typename T, int PHI, int TILE, bool BORDER>
void tile_exps_exact(const Shape& sh, const T* base, const T* prior, const T* qv, const T* bias, Rows rows, T* e,
                     T* sum) {
  T mx[TILE];
  for (int jj = 0; jj < TILE; ++jj) mx[jj] = -std::numeric_limits<T>::infinity();
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    for (int64_t dj = 0; dj < sh.k; ++dj) {
      T* l = e + (di * sh.k + dj) * TILE;
      logits<T, PHI, TILE, BORDER>(base + di * sh.Wp + sh.colof[dj], qv, prior[di * sh.k + dj], bias + dj * TILE, l);
      for (int jj = 0; jj < TILE; ++jj) mx[jj] = l[jj] > mx[jj] ? l[jj] : mx[jj];
    }
  }
  for (int jj = 0; jj < TILE; ++jj) sum[jj] = T(0);
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    for (int64_t o = di * sh.k * TILE; o < (di + 1) * sh.k * TILE; o += TILE) {
      for (int jj = 0; jj < TILE; ++jj) {
        const T v = exp2_clamped((e[o + jj] - mx[jj]) * log2e<T>());
        e[o + jj] = v;
        sum[jj] += v;
      }
    }
  }
}

// The unnormalised softmax numerators e (K2 x TILE) of one tile, and inv = lane / sum(e).
// One sweep: each logit, then e = 2^((l - c) log2 e) with c the centre position's logit;
// only if some sum reaches `sum_limit` (a logit far above the centre's) is the tile redone
// relative to the true maximum. Window rows outside the image are neither computed nor read.
template <typename T, int PHI, int TILE, bool BORDER>
void tile_exps(const Shape& sh, const T* __restrict__ kp, int64_t prow0, const T* __restrict__ prior, int64_t j0,
               const T* __restrict__ qv, const T* __restrict__ bias, const T* __restrict__ lane, Rows rows,
               T* __restrict__ e, T* __restrict__ inv) {
  const T* base = kp + prow0 * sh.Wp + j0;
  T shift[TILE];
  T sum[TILE];
  {
    T centre[TILE];
    logits<T, PHI, TILE, false>(base + sh.r * sh.Wp + sh.colof[sh.r], qv, prior[sh.r * sh.k + sh.r], bias, centre);
    for (int jj = 0; jj < TILE; ++jj) {
      shift[jj] = -centre[jj] * log2e<T>();
      sum[jj] = T(0);
    }
  }
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    const T* krow = base + di * sh.Wp;
    for (int64_t dj = 0; dj < sh.k; ++dj) {
      T* l = e + (di * sh.k + dj) * TILE;
      logits<T, PHI, TILE, BORDER>(krow + sh.colof[dj], qv, prior[di * sh.k + dj], bias + dj * TILE, l);
#pragma omp simd
      for (int jj = 0; jj < TILE; ++jj) {
        const T v = exp2_clamped(l[jj] * log2e<T>() + shift[jj]);
        l[jj] = v;
        sum[jj] += v;
      }
    }
  }
  bool overflow = false;
  for (int jj = 0; jj < TILE; ++jj) overflow |= !(sum[jj] < sum_limit<T>());
  if (overflow) tile_exps_exact<T, PHI, TILE, BORDER>(sh, base, prior, qv, bias, rows, e, sum);
  for (int jj = 0; jj < TILE; ++jj) inv[jj] = lane[jj] / sum[jj];
}

// ---------------------------------------------------------------------------------------
// Vector paths for float, chosen at build time from the compiler's target (-march=native):
// V16 (AVX-512F, one zmm register = 16 lanes) where __AVX512F__ is defined, V8 (AVX2 + FMA,
// 8 lanes) where __AVX2__ and __FMA__ are; both where the CPU has AVX-512 (the tile width
// is then picked per call, see `float_tile`). `isa()` reports what was compiled. Written
// with intrinsics (compilers turn the scalar form's clamps into compare-and-blend chains)
// and leaner than the scalar form: a degree-5 polynomial for 2^f (2.5e-7 relative, ~4 ulp).
// V8 adds 2^n to the exponent bits, t clamped to [-126, 127] so that stays a normal float
// (below 2^-126 of the centre's weight the result is 2^-126 * p instead of the true,
// smaller value); V16 scales by 2^n with vscalefps, which saturates to 0 and infinity by
// itself, so only a lower clamp (-150: the result is then 0) guards the rounding. Masked
// positions are zeroed explicitly (`valid`), with no per-element branch.
struct NoVec {};

#if defined(__AVX2__) && defined(__FMA__)
#define LRPROF_AVX2 1
struct V8 {
  using R = __m256;
  static constexpr int N = 8;
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R zero() { return _mm256_setzero_ps(); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static R abs(R a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static R keep(R v, const float* bits) { return _mm256_and_ps(v, _mm256_loadu_ps(bits)); }
  static bool any_not_below(R v, float limit) {
    return _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(limit), _CMP_NLT_UQ)) != 0;
  }
  static R exp2(R t) {
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256 shifted = _mm256_add_ps(t, magic);
    const __m256 f = _mm256_sub_ps(t, _mm256_sub_ps(shifted, magic));
    const __m256 p = poly(f);
    // n sits in the low bits of `shifted` (1.5 * 2^23 + n), whose high bits shift out
    const __m256i scale = _mm256_slli_epi32(_mm256_castps_si256(shifted), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), scale));
  }
  static R poly(R f) {
    R p = _mm256_set1_ps(0.0013400432653725147f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.009676037356257439f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.05550327152013779f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.2402210682630539f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.6931471824645996f));
    return _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0000001192092896f));
  }
};
#else
using V8 = NoVec;
#endif

#if defined(__AVX512F__)
#define LRPROF_AVX512 1
struct V16 {
  using R = __m512;
  static constexpr int N = 16;
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R zero() { return _mm512_setzero_ps(); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }
  static R abs(R a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7FFFFFFF))); }
  static R keep(R v, const float* bits) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_loadu_si512(bits)));
  }
  static bool any_not_below(R v, float limit) {
    return _mm512_cmp_ps_mask(v, _mm512_set1_ps(limit), _CMP_NLT_UQ) != 0;
  }
  static R exp2(R t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-150.0f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(0.0013400432653725147f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.009676037356257439f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05550327152013779f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2402210682630539f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471824645996f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001192092896f));
    return _mm512_scalef_ps(p, n);  // p * 2^n: 0 below, infinity above float's range
  }
};
#else
using V16 = NoVec;
#endif

// The float vector type of TILE lanes compiled here, or NoVec.
template <int TILE>
using VecOf = std::conditional_t<TILE == 16, V16, std::conditional_t<TILE == 8, V8, NoVec>>;

template <typename T, int TILE>
constexpr bool has_vec() {
  return std::is_same_v<T, float> && !std::is_same_v<VecOf<TILE>, NoVec>;
}

const char* isa() {
#if defined(LRPROF_AVX512)
  return "avx512";
#elif defined(LRPROF_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}

template <typename V, int PHI>
inline typename V::R logit_vec(typename V::R q, typename V::R key, typename V::R prior) {
  if constexpr (PHI == SQDIFF) {
    const auto d = V::sub(q, key);
    return V::fnmadd(d, d, prior);
  } else if constexpr (PHI == ABSDIFF) {
    return V::sub(prior, V::abs(V::sub(q, key)));
  } else {
    return V::fmadd(q, key, prior);
  }
}

// The one-sweep numerators of one tile (see tile_exps), one register per tile.
// UNIT: stride 1, where window column dj sits at offset dj (colof[dj] == dj, known here).
template <typename V, int PHI, bool BORDER, bool UNIT>
void tile_exps_vec(const Shape& sh, const float* __restrict__ kp, int64_t prow0, const float* __restrict__ prior,
                   int64_t j0, const float* __restrict__ qv, const float* __restrict__ bias,
                   const float* __restrict__ valid, const float* __restrict__ lane, Rows rows, float* __restrict__ e,
                   float* __restrict__ inv) {
  constexpr int N = V::N;
  const float* base = kp + prow0 * sh.Wp + j0;
  const auto q = V::load(qv);
  const auto l2e = V::set1(log2e<float>());
  const auto centre = logit_vec<V, PHI>(q, V::load(base + sh.r * sh.Wp + (UNIT ? sh.r : sh.colof[sh.r])),
                                        V::set1(prior[sh.r * sh.k + sh.r]));
  const auto shift = V::mul(centre, V::set1(-log2e<float>()));
  auto sum = V::zero();
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    const float* krow = base + di * sh.Wp;
    const float* prow = prior + di * sh.k;
    float* erow = e + di * sh.k * N;
    for (int64_t dj = 0; dj < sh.k; ++dj) {
      const auto l = logit_vec<V, PHI>(q, V::load(krow + (UNIT ? dj : sh.colof[dj])), V::set1(prow[dj]));
      auto v = V::exp2(V::fmadd(l, l2e, shift));
      if constexpr (BORDER) v = V::keep(v, valid + dj * N);
      V::store(erow + dj * N, v);
      sum = V::add(sum, v);
    }
  }
  if (V::any_not_below(sum, sum_limit<float>())) {
    alignas(64) float sums[N];
    tile_exps_exact<float, PHI, N, BORDER>(sh, base, prior, qv, bias, rows, e, sums);
    sum = V::load(sums);
  }
  V::store(inv, V::div(V::load(lane), sum));
}

template <typename T, int PHI, int TILE>
inline void tile_exps_any(const Shape& sh, const T* kp, int64_t prow0, const T* prior, int64_t j0, const T* qv,
                          const ColumnMasks<T, TILE>& masks, int64_t t, Rows rows, T* e, T* inv) {
  const T* bias = masks.bias.data() + t * sh.k * TILE;
  const T* lane = masks.lane.data() + t * TILE;
  if constexpr (has_vec<T, TILE>()) {
    using V = VecOf<TILE>;
    const T* valid = masks.valid.data() + t * sh.k * TILE;
    const bool unit = sh.s == 1;
    if (masks.interior[t]) {
      unit ? tile_exps_vec<V, PHI, false, true>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv)
           : tile_exps_vec<V, PHI, false, false>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv);
    } else {
      unit ? tile_exps_vec<V, PHI, true, true>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv)
           : tile_exps_vec<V, PHI, true, false>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv);
    }
    return;
  }
  if (masks.interior[t]) {
    tile_exps<T, PHI, TILE, false>(sh, kp, prow0, prior, j0, qv, bias, lane, rows, e, inv);
  } else {
    tile_exps<T, PHI, TILE, true>(sh, kp, prow0, prior, j0, qv, bias, lane, rows, e, inv);
  }
}

// y rows of CB channels for one tile: sum over the window of e * x, times inv (each e
// vector loaded once per CB multiply-adds; the CB accumulators stay in registers).
template <typename T, int TILE, int CB>
inline void aggregate(const Shape& sh, const T* __restrict__ xp, int64_t plane, int64_t prow0, const T* __restrict__ e,
                      const T* __restrict__ inv, int64_t j0, Rows rows, T* const* __restrict__ out) {
  T a[CB][TILE];
  for (int cc = 0; cc < CB; ++cc)
    for (int jj = 0; jj < TILE; ++jj) a[cc][jj] = T(0);
  const T* base = xp + prow0 * sh.Wp + j0;
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    for (int64_t dj = 0; dj < sh.k; ++dj) {
      const T* ev = e + (di * sh.k + dj) * TILE;
      const T* xr = base + di * sh.Wp + sh.colof[dj];
#pragma GCC unroll 8
      for (int cc = 0; cc < CB; ++cc) {
#pragma omp simd
        for (int jj = 0; jj < TILE; ++jj) a[cc][jj] += ev[jj] * xr[cc * plane + jj];
      }
    }
  }
  if (j0 + TILE <= sh.Wo) {
    for (int cc = 0; cc < CB; ++cc) {
#pragma omp simd
      for (int jj = 0; jj < TILE; ++jj) out[cc][j0 + jj] = a[cc][jj] * inv[jj];
    }
  } else {
    for (int cc = 0; cc < CB; ++cc)
      for (int64_t jj = 0; jj < sh.Wo - j0; ++jj) out[cc][j0 + jj] = a[cc][jj] * inv[jj];
  }
}

template <typename T, int TILE>
inline void load_lanes(const T* src, T* dst, int64_t j0, int64_t Wo) {
  for (int jj = 0; jj < TILE; ++jj) dst[jj] = j0 + jj < Wo ? src[j0 + jj] : T(0);
}

template <typename T, int PHI, int TILE, int CB>
inline void aggregate_block(const Shape& sh, const T* xp, int64_t plane, int64_t prow0, const T* e, const T* inv,
                            int64_t j0, Rows rows, T* y, int64_t c) {
  T* out[CB];
  for (int cc = 0; cc < CB; ++cc) out[cc] = y + (c + cc) * sh.Ho * sh.Wo;
  aggregate<T, TILE, CB>(sh, xp + c * plane, plane, prow0, e, inv, j0, rows, out);
}

// The forward's hot loop for float: one sweep over the window that takes each position's
// logit and exponential (kept in e for channels beyond the first CB) and multiply-adds it
// into CB channel accumulators held in registers (the register tile: CB channels x N
// output columns, each exponential used CB times from a register), then writes those CB
// rows of y. CB = 1 with m = 1 is the stem's path: one channel per group, the exponential
// is nearly all of the work. Returns false, writing nothing, when some sum reached
// `sum_limit` (the caller then redoes the tile relative to the true maximum).
template <typename V, int PHI, bool BORDER, int CB, bool KEEP, bool UNIT>
bool tile_fused_vec(const Shape& sh, const float* __restrict__ kp, const float* __restrict__ xp, int64_t plane,
                    int64_t prow0, const float* __restrict__ prior, int64_t j0, const float* __restrict__ qv,
                    const float* __restrict__ valid, const float* __restrict__ lane, Rows rows,
                    float* __restrict__ e, float* __restrict__ inv, float* const* __restrict__ out) {
  using R = typename V::R;
  constexpr int N = V::N;
  const float* kbase = kp + prow0 * sh.Wp + j0;
  const float* xbase = xp + prow0 * sh.Wp + j0;
  const R q = V::load(qv);
  const R l2e = V::set1(log2e<float>());
  const R centre = logit_vec<V, PHI>(q, V::load(kbase + sh.r * sh.Wp + (UNIT ? sh.r : sh.colof[sh.r])),
                                     V::set1(prior[sh.r * sh.k + sh.r]));
  const R shift = V::mul(centre, V::set1(-log2e<float>()));
  // S independent sets of accumulators (positions dj alternate between them): with one or
  // two channels (the stem, m = 1) a single chain of dependent adds would bound the loop
  constexpr int S = CB <= 2 ? 2 : 1;
  R sums[S];
  R acc[S][CB];
  for (int u = 0; u < S; ++u) {
    sums[u] = V::zero();
    for (int cc = 0; cc < CB; ++cc) acc[u][cc] = V::zero();
  }
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    const float* krow = kbase + di * sh.Wp;
    const float* xrow = xbase + di * sh.Wp;
    const float* prow = prior + di * sh.k;
    float* erow = e + di * sh.k * N;
    // one window position (a lambda: gcc schedules it better than the same body inline)
    auto position = [&](int64_t dj, int u) {
      const int64_t col = UNIT ? dj : sh.colof[dj];
      const R l = logit_vec<V, PHI>(q, V::load(krow + col), V::set1(prow[dj]));
      R v = V::exp2(V::fmadd(l, l2e, shift));
      if constexpr (BORDER) v = V::keep(v, valid + dj * N);
      if constexpr (KEEP) V::store(erow + dj * N, v);
      sums[u] = V::add(sums[u], v);
#pragma GCC unroll 8
      for (int cc = 0; cc < CB; ++cc) acc[u][cc] = V::fmadd(v, V::load(xrow + cc * plane + col), acc[u][cc]);
    };
    int64_t dj = 0;
    for (; dj + S <= sh.k; dj += S) {
      for (int u = 0; u < S; ++u) position(dj + u, u);
    }
    for (; dj < sh.k; ++dj) position(dj, 0);
  }
  R sum = sums[0];
  for (int u = 1; u < S; ++u) {
    sum = V::add(sum, sums[u]);
    for (int cc = 0; cc < CB; ++cc) acc[0][cc] = V::add(acc[0][cc], acc[u][cc]);
  }
  if (V::any_not_below(sum, sum_limit<float>())) return false;
  const R scale = V::div(V::load(lane), sum);
  V::store(inv, scale);
  const int64_t n = std::min<int64_t>(N, sh.Wo - j0);
  for (int cc = 0; cc < CB; ++cc) {
    const R y = V::mul(acc[0][cc], scale);
    if (n == N) {
      V::store(out[cc] + j0, y);
    } else {
      alignas(64) float lanes[N];
      V::store(lanes, y);
      std::memcpy(out[cc] + j0, lanes, n * sizeof(float));
    }
  }
  return true;
}

// The fused sweep for the first CB channels of a group (CB = 8, 4, 2 or 1, at most mc),
// the other channels from the kept e; false when the tile must be redone.
template <typename V, int PHI, bool UNIT>
bool forward_tile_vec(const Shape& sh, const float* kp, const float* xp, int64_t plane, int64_t prow0,
                      const float* prior, int64_t j0, const float* qv, const ColumnMasks<float, V::N>& masks,
                      int64_t t, Rows rows, float* e, float* inv, float* yrow, int64_t mc) {
  constexpr int N = V::N;
  const float* valid = masks.valid.data() + t * sh.k * N;
  const float* lane = masks.lane.data() + t * N;
  const bool border = !masks.interior[t];
  float* out[8];
  for (int cc = 0; cc < 8; ++cc) out[cc] = yrow + std::min<int64_t>(cc, mc - 1) * sh.Ho * sh.Wo;
  const int cb = mc >= 8 ? 8 : mc >= 4 ? 4 : mc >= 2 ? 2 : 1;
  bool ok;
#define LRPROF_FUSED(CB, KEEP)                                                                                   \
  ok = border ? tile_fused_vec<V, PHI, true, CB, KEEP, UNIT>(sh, kp, xp, plane, prow0, prior, j0, qv, valid, lane, \
                                                             rows, e, inv, out)                                     \
              : tile_fused_vec<V, PHI, false, CB, KEEP, UNIT>(sh, kp, xp, plane, prow0, prior, j0, qv, valid,      \
                                                              lane, rows, e, inv, out)
  if (cb == mc) {  // the whole group in registers: e is not kept
    switch (cb) {
      case 8: LRPROF_FUSED(8, false); break;
      case 4: LRPROF_FUSED(4, false); break;
      case 2: LRPROF_FUSED(2, false); break;
      default: LRPROF_FUSED(1, false); break;
    }
  } else {
    switch (cb) {
      case 8: LRPROF_FUSED(8, true); break;
      case 4: LRPROF_FUSED(4, true); break;
      default: LRPROF_FUSED(2, true); break;
    }
  }
#undef LRPROF_FUSED
  if (!ok) return false;
  int64_t c = cb;
  for (; c + 8 <= mc; c += 8) aggregate_block<float, PHI, N, 8>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
  for (; c + 4 <= mc; c += 4) aggregate_block<float, PHI, N, 4>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
  for (; c < mc; ++c) aggregate_block<float, PHI, N, 1>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
  return true;
}

// Tasks handed out one at a time to whichever thread is free (OpenMP's dynamic schedule):
// on a machine shared with other processes, a thread that loses its core does not hold the
// others back as it would with a static split. fn(task, thread); fn does not throw.
template <typename F>
void parallel_tasks(int64_t ntasks, int64_t threads, const F& fn) {
#ifdef _OPENMP
  const int team = static_cast<int>(std::max<int64_t>(1, std::min(threads, ntasks)));
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (int64_t task = 0; task < ntasks; ++task) fn(task, omp_get_thread_num());
#else
  for (int64_t task = 0; task < ntasks; ++task) fn(task, 0);
#endif
}

template <typename T, int PHI, int TILE>
void forward_impl(const Shape& sh, const T* x, const T* query, const T* key, const T* prior, T* y) {
  // Tasks: (batch, group, block of output rows), rows split until there are about 8 tasks
  // per thread (each block re-copies k - s halo rows: a few percent).
  const int64_t threads = at::get_num_threads();
  const int64_t pairs = sh.B * sh.G;
  const int64_t blocks = std::min<int64_t>(sh.Ho, std::max<int64_t>(1, (8 * threads + pairs - 1) / pairs));
  const int64_t rows_per = (sh.Ho + blocks - 1) / blocks;
  const int64_t Hp = (rows_per - 1) * sh.s + sh.k;
  const int64_t plane = Hp * sh.Wp;
  // in 16-float steps: every thread's planes start on a 64-byte line, as the scratch does
  const int64_t per_thread = ((sh.m + 1) * plane + sh.K2 * TILE + 2 * TILE + 15) / 16 * 16;
  at::Tensor scratch = at::empty({threads, per_thread}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  T* scratch0 = scratch.data_ptr<T>();
  const ColumnMasks<T, TILE> masks(sh);

  parallel_tasks(pairs * blocks, threads, [&](int64_t task, int64_t thread) {
    T* base = scratch0 + thread * per_thread;
    T* xp = base;
    T* kp = xp + sh.m * plane;
    T* e = kp + plane;
    T* qv = e + sh.K2 * TILE;
    T* inv = qv + TILE;
    {
      const int64_t b = task / (sh.G * blocks);
      const int64_t g = (task / blocks) % sh.G;
      const int64_t i0 = (task % blocks) * rows_per;
      const int64_t i1 = std::min(sh.Ho, i0 + rows_per);
      if (i0 >= i1) return;
      const int64_t c0 = g * sh.m;
      const int64_t mc = std::min(sh.m, sh.C - c0);
      const int64_t row0 = i0 * sh.s - sh.r;
      const int64_t hp = (i1 - i0 - 1) * sh.s + sh.k;
      for (int64_t c = 0; c < mc; ++c) {
        pad_plane(x + ((b * sh.C + c0 + c) * sh.H) * sh.W, sh, row0, hp, xp + c * plane);
      }
      pad_plane(key + ((b * sh.G + g) * sh.H) * sh.W, sh, row0, hp, kp);
      T* yg = y + (b * sh.C + c0) * sh.Ho * sh.Wo;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t prow0 = (i - i0) * sh.s;
        const T* qrow = query + ((b * sh.G + g) * sh.Ho + i) * sh.Wo;
        const Rows rows = rows_inside(sh, i);
        T* yrow = yg + i * sh.Wo;
        for (int64_t t = 0; t < sh.tiles; ++t) {
          const int64_t j0 = t * TILE;
          load_lanes<T, TILE>(qrow, qv, j0, sh.Wo);
          if constexpr (has_vec<T, TILE>()) {
            using V = VecOf<TILE>;
            const bool done =
                sh.s == 1 ? forward_tile_vec<V, PHI, true>(sh, kp, xp, plane, prow0, prior + g * sh.K2, j0, qv, masks,
                                                           t, rows, e, inv, yrow, mc)
                          : forward_tile_vec<V, PHI, false>(sh, kp, xp, plane, prow0, prior + g * sh.K2, j0, qv,
                                                            masks, t, rows, e, inv, yrow, mc);
            if (done) continue;
          }
          tile_exps_any<T, PHI, TILE>(sh, kp, prow0, prior + g * sh.K2, j0, qv, masks, t, rows, e, inv);
          int64_t c = 0;
          for (; c + 8 <= mc; c += 8) aggregate_block<T, PHI, TILE, 8>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
          for (; c + 4 <= mc; c += 4) aggregate_block<T, PHI, TILE, 4>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
          for (; c < mc; ++c) aggregate_block<T, PHI, TILE, 1>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
        }
      }
    }
  });
}

#ifdef LRPROF_AVX512
// The backward's tile for float, stride 1, 16 lanes, 3 <= k <= 17: grad_x and grad_key are
// scatters into overlapping windows of a padded row (position dj adds to columns dj ..
// dj + 15), which as memory updates would chain every store into the next load. Here the
// contributions of a window row are gathered in two registers (columns 0-15 and 16-31 of
// the row: each position's vector rotated by dj lanes, vpermps, and added under a mask),
// and the row is updated in memory once. Sums dw (K2 x 16), dsum, dquery (dqv), dprior.
template <int PHI>
void backward_tile_v16(const Shape& sh, const float* __restrict__ xp, float* __restrict__ dxp,
                       const float* __restrict__ kp, float* __restrict__ dkp, int64_t plane, int64_t prow0, int64_t j0,
                       Rows rows, const float* __restrict__ w, float* __restrict__ dw, const float* __restrict__ dyv,
                       const float* __restrict__ qv, float* __restrict__ dqv, float* __restrict__ dprior, int64_t mc) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto rotate = [&](__m512 v, int64_t dj) {  // lane i <- v[(i - dj) mod 16]
    return _mm512_permutexvar_ps(_mm512_and_si512(_mm512_sub_epi32(iota, _mm512_set1_epi32(static_cast<int>(dj))),
                                                  _mm512_set1_epi32(15)),
                                 v);
  };
  auto scatter_row = [&](float* row, const __m512& lo, const __m512& hi) {
    _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), lo));
    _mm512_storeu_ps(row + 16, _mm512_add_ps(_mm512_loadu_ps(row + 16), hi));
  };
  __m512 dsum = _mm512_setzero_ps();
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    const int64_t off = (prow0 + di) * sh.Wp + j0;
    float* dwrow = dw + di * sh.k * 16;
    const float* wrow = w + di * sh.k * 16;
    for (int64_t o = 0; o < sh.k * 16; o += 16) _mm512_store_ps(dwrow + o, _mm512_setzero_ps());
    for (int64_t c = 0; c < mc; ++c) {
      const __m512 dy = _mm512_load_ps(dyv + c * 16);
      const float* xr = xp + c * plane + off;
      __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
      for (int64_t dj = 0; dj < sh.k; ++dj) {
        float* dwv = dwrow + dj * 16;
        _mm512_store_ps(dwv, _mm512_fmadd_ps(dy, _mm512_loadu_ps(xr + dj), _mm512_load_ps(dwv)));
        const __m512 p = rotate(_mm512_mul_ps(_mm512_load_ps(wrow + dj * 16), dy), dj);
        const __mmask16 low = static_cast<__mmask16>(0xFFFFu << dj);
        lo = _mm512_mask_add_ps(lo, low, lo, p);
        hi = _mm512_mask_add_ps(hi, static_cast<__mmask16>(~low), hi, p);
      }
      scatter_row(dxp + c * plane + off, lo, hi);
    }
    for (int64_t o = 0; o < sh.k * 16; o += 16)
      dsum = _mm512_fmadd_ps(_mm512_load_ps(wrow + o), _mm512_load_ps(dwrow + o), dsum);
  }
  // softmax backward, then the composability's gradients to query and key
  const __m512 q = _mm512_load_ps(qv);
  __m512 dq = _mm512_setzero_ps();
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    const int64_t off = (prow0 + di) * sh.Wp + j0;
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    for (int64_t dj = 0; dj < sh.k; ++dj) {
      const int64_t o = di * sh.k + dj;
      const __m512 dl = _mm512_mul_ps(_mm512_load_ps(w + o * 16), _mm512_sub_ps(_mm512_load_ps(dw + o * 16), dsum));
      const __m512 kv = _mm512_loadu_ps(kp + off + dj);
      __m512 gq, gk;
      if constexpr (PHI == SQDIFF) {
        gk = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f), _mm512_sub_ps(q, kv)), dl);
        gq = _mm512_sub_ps(_mm512_setzero_ps(), gk);
      } else if constexpr (PHI == ABSDIFF) {
        const __m512 d = _mm512_sub_ps(q, kv);
        __m512 sign = _mm512_mask_mov_ps(_mm512_setzero_ps(), _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_GT_OQ),
                                         _mm512_set1_ps(1.0f));
        sign = _mm512_mask_mov_ps(sign, _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
        gk = _mm512_mul_ps(sign, dl);
        gq = _mm512_sub_ps(_mm512_setzero_ps(), gk);
      } else {
        gq = _mm512_mul_ps(kv, dl);
        gk = _mm512_mul_ps(q, dl);
      }
      dq = _mm512_add_ps(dq, gq);
      const __m512 p = rotate(gk, dj);
      const __mmask16 low = static_cast<__mmask16>(0xFFFFu << dj);
      lo = _mm512_mask_add_ps(lo, low, lo, p);
      hi = _mm512_mask_add_ps(hi, static_cast<__mmask16>(~low), hi, p);
      dprior[o] += _mm512_reduce_add_ps(dl);
    }
    scatter_row(dkp + off, lo, hi);
  }
  _mm512_store_ps(dqv, dq);
}
#endif

template <typename T, int PHI, int TILE>
void backward_impl(const Shape& sh, const T* dy, const T* x, const T* query, const T* key, const T* prior,
                   T* dx, T* dquery, T* dkey, T* dprior_parts) {
  // Tasks: (batch, group) with whole planes, so that the scatter of grad_x and grad_key
  // into the window positions stays inside one task (no two threads write one element).
  const int64_t threads = at::get_num_threads();
  const int64_t Hp = std::max((sh.Ho - 1) * sh.s + sh.k, sh.H + sh.r);
  const int64_t plane = Hp * sh.Wp;
  const int64_t per_thread = (2 * sh.m + 2) * plane + 2 * sh.K2 * TILE + (sh.m + 4) * TILE;
  const bool fast_rows = sh.s == 1 && sh.k >= 3 && sh.k <= 15;  // backward_tile_v16's case (AVX-512)
  (void)fast_rows;
  at::Tensor scratch = at::empty({threads, per_thread}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  T* scratch0 = scratch.data_ptr<T>();
  const ColumnMasks<T, TILE> masks(sh);

  parallel_tasks(sh.B * sh.G, threads, [&](int64_t task, int64_t thread) {
    T* base = scratch0 + thread * per_thread;
    T* xp = base;
    T* dxp = xp + sh.m * plane;
    T* kp = dxp + sh.m * plane;
    T* dkp = kp + plane;
    T* w = dkp + plane;
    T* dw = w + sh.K2 * TILE;
    T* dyv = dw + sh.K2 * TILE;
    T* dqv = dyv + sh.m * TILE;
    T* dsum = dqv + TILE;
    T* qv = dsum + TILE;
    T* inv = qv + TILE;
    {
      const int64_t b = task / sh.G;
      const int64_t g = task % sh.G;
      const int64_t c0 = g * sh.m;
      const int64_t mc = std::min(sh.m, sh.C - c0);
      for (int64_t c = 0; c < mc; ++c) {
        pad_plane(x + ((b * sh.C + c0 + c) * sh.H) * sh.W, sh, -sh.r, Hp, xp + c * plane);
      }
      pad_plane(key + ((b * sh.G + g) * sh.H) * sh.W, sh, -sh.r, Hp, kp);
      std::fill(dxp, dxp + mc * plane, T(0));
      std::fill(dkp, dkp + plane, T(0));
      T* dprior = dprior_parts + task * sh.K2;
      std::fill(dprior, dprior + sh.K2, T(0));
      for (int64_t i = 0; i < sh.Ho; ++i) {
        const int64_t prow0 = i * sh.s;
        const T* qrow = query + ((b * sh.G + g) * sh.Ho + i) * sh.Wo;
        const Rows rows = rows_inside(sh, i);
        for (int64_t t = 0; t < sh.tiles; ++t) {
          const int64_t j0 = t * TILE;
          load_lanes<T, TILE>(qrow, qv, j0, sh.Wo);
          tile_exps_any<T, PHI, TILE>(sh, kp, prow0, prior + g * sh.K2, j0, qv, masks, t, rows, w, inv);
          for (int64_t di = rows.lo; di < rows.hi; ++di) {  // the softmax weights themselves
            T* wrow = w + di * sh.k * TILE;
            for (int64_t o = 0; o < sh.k * TILE; o += TILE) {
#pragma omp simd
              for (int jj = 0; jj < TILE; ++jj) wrow[o + jj] *= inv[jj];
            }
          }
          for (int64_t c = 0; c < mc; ++c) {
            load_lanes<T, TILE>(dy + ((b * sh.C + c0 + c) * sh.Ho + i) * sh.Wo, dyv + c * TILE, j0, sh.Wo);
          }
#ifdef LRPROF_AVX512
          if constexpr (has_vec<T, TILE>() && TILE == 16) {
            if (fast_rows) {
              backward_tile_v16<PHI>(sh, xp, dxp, kp, dkp, plane, prow0, j0, rows, w, dw, dyv, qv, dqv, dprior, mc);
              T* dqrow = dquery + ((b * sh.G + g) * sh.Ho + i) * sh.Wo;
              for (int64_t jj = 0; jj < std::min<int64_t>(TILE, sh.Wo - j0); ++jj) dqrow[j0 + jj] = dqv[jj];
              continue;
            }
          }
#endif
          for (int jj = 0; jj < TILE; ++jj) {
            dsum[jj] = T(0);
            dqv[jj] = T(0);
          }
          // grad of the weights (dw = sum_c dy x) and grad_x (+= w dy), window by window
          for (int64_t di = rows.lo; di < rows.hi; ++di) {
            const int64_t off = (prow0 + di) * sh.Wp + j0;
            for (int64_t dj = 0; dj < sh.k; ++dj) {
              const int64_t o = di * sh.k + dj;
              const T* __restrict__ wv = w + o * TILE;
              T* __restrict__ dwv = dw + o * TILE;
              for (int jj = 0; jj < TILE; ++jj) dwv[jj] = T(0);
              for (int64_t c = 0; c < mc; ++c) {
                const T* __restrict__ xr = xp + c * plane + off + sh.colof[dj];
                T* __restrict__ dxr = dxp + c * plane + off + sh.colof[dj];
                const T* __restrict__ dyc = dyv + c * TILE;
#pragma omp simd
                for (int jj = 0; jj < TILE; ++jj) {
                  dwv[jj] += dyc[jj] * xr[jj];
                  dxr[jj] += wv[jj] * dyc[jj];
                }
              }
#pragma omp simd
              for (int jj = 0; jj < TILE; ++jj) dsum[jj] += wv[jj] * dwv[jj];
            }
          }
          // softmax backward, then the composability's gradients to query and key
          for (int64_t di = rows.lo; di < rows.hi; ++di) {
            const int64_t off = (prow0 + di) * sh.Wp + j0;
            for (int64_t dj = 0; dj < sh.k; ++dj) {
              const int64_t o = di * sh.k + dj;
              const T* __restrict__ wv = w + o * TILE;
              const T* __restrict__ dwv = dw + o * TILE;
              const T* __restrict__ kr = kp + off + sh.colof[dj];
              T* __restrict__ dkr = dkp + off + sh.colof[dj];
              T total = T(0);
#pragma omp simd reduction(+ : total)
              for (int jj = 0; jj < TILE; ++jj) {
                const T dl = wv[jj] * (dwv[jj] - dsum[jj]);
                total += dl;
                const T kv = kr[jj];
                const T q = qv[jj];
                T gq, gk;
                if constexpr (PHI == SQDIFF) {
                  gq = T(-2) * (q - kv) * dl;
                  gk = -gq;
                } else if constexpr (PHI == ABSDIFF) {
                  const T d = q - kv;
                  const T sign = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
                  gq = -sign * dl;
                  gk = sign * dl;
                } else {
                  gq = kv * dl;
                  gk = q * dl;
                }
                dqv[jj] += gq;
                dkr[jj] += gk;
              }
              dprior[o] += total;
            }
          }
          T* dqrow = dquery + ((b * sh.G + g) * sh.Ho + i) * sh.Wo;
          for (int64_t jj = 0; jj < std::min<int64_t>(TILE, sh.Wo - j0); ++jj) dqrow[j0 + jj] = dqv[jj];
        }
      }
      for (int64_t c = 0; c < mc; ++c) {
        unpad_plane(dxp + c * plane, sh, Hp, dx + ((b * sh.C + c0 + c) * sh.H) * sh.W);
      }
      unpad_plane(dkp, sh, Hp, dkey + ((b * sh.G + g) * sh.H) * sh.W);
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& query, const at::Tensor& key, const at::Tensor& prior,
                  int64_t k, int64_t m, int64_t s) {
  TORCH_CHECK(x.dim() == 4 && query.dim() == 4 && key.dim() == 4 && prior.dim() == 2,
              "expected x, query, key of 4 dimensions and prior of 2");
  TORCH_CHECK(x.device().is_cpu(), "lrprof_fused runs on the CPU");
  TORCH_CHECK(query.scalar_type() == x.scalar_type() && key.scalar_type() == x.scalar_type() &&
                  prior.scalar_type() == x.scalar_type(),
              "x, query, key and prior must share one dtype");
  TORCH_CHECK(k >= 1 && k % 2 == 1 && k <= 63, "k must be odd, in 1..63");
  TORCH_CHECK(s >= 1 && m >= 1, "stride and m must be >= 1");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t G = (C + m - 1) / m;
  const int64_t Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1;
  TORCH_CHECK(query.size(0) == B && query.size(1) == G && query.size(2) == Ho && query.size(3) == Wo,
              "query must be (B, ceil(C/m), H', W')");
  TORCH_CHECK(key.size(0) == B && key.size(1) == G && key.size(2) == H && key.size(3) == W,
              "key must be (B, ceil(C/m), H, W)");
  TORCH_CHECK(prior.size(0) == G && prior.size(1) == k * k, "prior must be (ceil(C/m), k*k)");
}

template <typename F>
void with_phi(int phi, F&& f) {
  switch (phi) {
    case SQDIFF: f(std::integral_constant<int, SQDIFF>{}); break;
    case ABSDIFF: f(std::integral_constant<int, ABSDIFF>{}); break;
    default: f(std::integral_constant<int, MUL>{}); break;
  }
}

template <typename T>
constexpr int tile_of() {
  return 32 / static_cast<int>(sizeof(T));  // one AVX2 register: 8 floats, 4 doubles
}

// The forward's tile width for float: 16 lanes (one AVX-512 register) where compiled,
// unless it pads the rows by over a quarter more than 8 lanes would (Wo = 7: 16 lanes
// for 7 columns), else 8; at Wo = 56 the 16-lane path is faster despite its padding. LRPROF_FUSED_TILE=8 or 16 in the environment forces one (tests, benchmarks).
int64_t float_tile(int64_t Wo) {
  int64_t forced = 0;
  if (const char* env = std::getenv("LRPROF_FUSED_TILE")) forced = std::atoi(env);
#ifdef LRPROF_AVX512
  if (forced == 16) return 16;
  if (forced == 8) return 8;
  return 4 * ((Wo + 15) / 16 * 16) <= 5 * ((Wo + 7) / 8 * 8) ? 16 : 8;
#else
  (void)Wo;
  return 8;
#endif
}

template <typename T, int TILE>
void forward_of(const at::Tensor& x, const at::Tensor& query, const at::Tensor& key, const at::Tensor& prior,
                int64_t k, int64_t m, int64_t stride, int code, at::Tensor& y) {
  const Shape sh = make_shape<TILE>(x, query, k, m, stride);
  with_phi(code, [&](auto phi_c) {
    forward_impl<T, decltype(phi_c)::value, TILE>(sh, x.data_ptr<T>(), query.data_ptr<T>(), key.data_ptr<T>(),
                                                  prior.data_ptr<T>(), y.data_ptr<T>());
  });
}

at::Tensor relation(const at::Tensor& x_, const at::Tensor& query_, const at::Tensor& key_,
                    const at::Tensor& prior_, int64_t k, int64_t m, int64_t stride, c10::string_view phi) {
  check_inputs(x_, query_, key_, prior_, k, m, stride);
  const int code = phi_code(phi);
  const at::Tensor x = x_.contiguous(), query = query_.contiguous(), key = key_.contiguous(),
                   prior = prior_.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), query.size(2), query.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrprof_fused::relation", [&] {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (float_tile(query.size(3)) == 16) {
        forward_of<float, 16>(x, query, key, prior, k, m, stride, code, y);
      } else {
        forward_of<float, 8>(x, query, key, prior, k, m, stride, code, y);
      }
    } else {
      forward_of<scalar_t, tile_of<scalar_t>()>(x, query, key, prior, k, m, stride, code, y);
    }
  });
  return y;
}

// Micro-benchmarks of this build's ceilings on the CPU, on at::get_num_threads() threads:
// `fma`: FLOP/s (2 per lane) of 12 independent fused multiply-add chains per thread in
// registers, nothing loaded; `exp`: exponentials per second of the kernel's own vector
// exp2 over a 4096-float buffer per thread (L1 resident), stored to a second buffer.
// Each thread runs `reps` rounds; the rate is over the wall time of the parallel region.
#if defined(LRPROF_AVX512)
using VBest = V16;
#elif defined(LRPROF_AVX2)
using VBest = V8;
#else
using VBest = NoVec;
#endif

double peak(c10::string_view what, int64_t reps) {
  const bool fma = what == "fma";
  TORCH_CHECK(fma || what == "exp", "peak: fma or exp, got ", std::string(what));
  TORCH_CHECK(reps >= 1, "peak: reps >= 1");
  constexpr int64_t kBuf = 4096;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  std::vector<float> sink(threads * 16, 0.0f);
  double per_thread = 0;
  const auto started = std::chrono::steady_clock::now();
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(threads))
#endif
  {
#ifdef _OPENMP
    const int64_t thread = omp_get_thread_num();
#else
    const int64_t thread = 0;
#endif
    float total = 0.0f;
#if defined(LRPROF_AVX2) || defined(LRPROF_AVX512)
    {
      using V = VBest;
      if (fma) {
        typename V::R acc[12];
        for (int u = 0; u < 12; ++u) acc[u] = V::set1(0.001f * static_cast<float>(u + thread));
        const auto a = V::set1(0.999999f), b = V::set1(1e-7f);
        for (int64_t i = 0; i < reps * 1024; ++i) {
#pragma GCC unroll 12
          for (int u = 0; u < 12; ++u) acc[u] = V::fmadd(acc[u], a, b);
        }
        alignas(64) float lanes[V::N];
        for (int u = 1; u < 12; ++u) acc[0] = V::add(acc[0], acc[u]);
        V::store(lanes, acc[0]);
        total = lanes[0];
        if (thread == 0) per_thread = 2.0 * V::N * 12 * reps * 1024;
      } else {
        std::vector<float> in(kBuf), out(kBuf);
        for (int64_t i = 0; i < kBuf; ++i) in[i] = -20.0f * static_cast<float>(i) / kBuf;
        for (int64_t rep = 0; rep < reps; ++rep) {
          for (int64_t i = 0; i < kBuf; i += V::N) V::store(&out[i], V::exp2(V::load(&in[i])));
          total += out[rep % kBuf];
        }
        if (thread == 0) per_thread = static_cast<double>(kBuf) * reps;
      }
    }
#else  // the scalar build: the same loops, as the compiler vectorises them
    {
      std::vector<float> in(kBuf), out(kBuf);
      for (int64_t i = 0; i < kBuf; ++i) in[i] = -20.0f * static_cast<float>(i) / kBuf;
      for (int64_t rep = 0; rep < reps; ++rep) {
        for (int64_t i = 0; i < kBuf; ++i) out[i] = fma ? in[i] * 0.999f + out[i] : exp2_clamped(in[i]);
        total += out[rep % kBuf];
      }
      if (thread == 0) per_thread = (fma ? 2.0 : 1.0) * kBuf * reps;
    }
#endif
    sink[thread * 16] = total;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  volatile float keep = sink[0];
  (void)keep;
  return per_thread * threads / seconds;
}

// What the forward compiled to and runs: "avx512 tile=16" and the like.
std::string path(int64_t width) {
  return std::string(isa()) + " tile=" + std::to_string(float_tile(width));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> relation_backward(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& query_, const at::Tensor& key_,
    const at::Tensor& prior_, int64_t k, int64_t m, int64_t stride, c10::string_view phi) {
  check_inputs(x_, query_, key_, prior_, k, m, stride);
  const int code = phi_code(phi);
  const at::Tensor grad = grad_.contiguous(), x = x_.contiguous(), query = query_.contiguous(),
                   key = key_.contiguous(), prior = prior_.contiguous();
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({x.size(0), x.size(1), query.size(2), query.size(3)}) &&
                  grad.scalar_type() == x.scalar_type(),
              "grad must be (B, C, H', W') in x's dtype");
  at::Tensor dx = at::empty_like(x), dquery = at::empty_like(query), dkey = at::empty_like(key);
  at::Tensor parts = at::empty({x.size(0) * query.size(1), k * k}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrprof_fused::relation_backward", [&] {
    auto run = [&](auto tile_c) {
      constexpr int TILE = decltype(tile_c)::value;
      const Shape sh = make_shape<TILE>(x, query, k, m, stride);
      with_phi(code, [&](auto phi_c) {
        backward_impl<scalar_t, decltype(phi_c)::value, TILE>(
            sh, grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(),
            key.data_ptr<scalar_t>(), prior.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
            dquery.data_ptr<scalar_t>(), dkey.data_ptr<scalar_t>(), parts.data_ptr<scalar_t>());
      });
    };
    if constexpr (std::is_same_v<scalar_t, float>) {  // the forward's tile width (float_tile)
      if (float_tile(query.size(3)) == 16) {
        run(std::integral_constant<int, 16>{});
      } else {
        run(std::integral_constant<int, 8>{});
      }
    } else {
      run(std::integral_constant<int, tile_of<scalar_t>()>{});
    }
  });
  // the per-(batch, group) parts of grad_prior, summed over the batch
  at::Tensor dprior = at::zeros_like(prior);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrprof_fused::relation_backward_prior", [&] {
    const int64_t G = query.size(1), K2 = k * k;
    const scalar_t* src = parts.data_ptr<scalar_t>();
    scalar_t* dst = dprior.data_ptr<scalar_t>();
    for (int64_t b = 0; b < x.size(0); ++b)
      for (int64_t i = 0; i < G * K2; ++i) dst[i] += src[b * G * K2 + i];
  });
  return {dx, dquery, dkey, dprior};
}

}  // namespace

TORCH_LIBRARY(lrprof_fused, lib) {
  lib.def("relation(Tensor x, Tensor query, Tensor key, Tensor prior, int k, int m, int stride, str phi) -> Tensor");
  lib.def("isa() -> str", [] { return std::string(isa()); });
  lib.def("path(int width) -> str", &path);
  lib.def("peak(str what, int reps) -> float", &peak);
  lib.def(
      "relation_backward(Tensor grad, Tensor x, Tensor query, Tensor key, Tensor prior, int k, int m, "
      "int stride, str phi) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lrprof_fused, CPU, lib) {
  lib.impl("relation", &relation);
  lib.impl("relation_backward", &relation_backward);
}
