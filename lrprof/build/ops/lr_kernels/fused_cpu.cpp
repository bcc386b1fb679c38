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
#include <cmath>
#include <cstdint>
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
      for (int64_t idx = 0; idx < sh.Wq; ++idx) {
        const int64_t x = idx * sh.s + phase - sh.r;
        out[idx] = x >= 0 && x < sh.W ? row[x] : T(0);
      }
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

#if defined(__AVX2__) && defined(__FMA__)
#define LRPROF_AVX2 1
// The same sweep for float, stride 1, one AVX2 register per tile, written with intrinsics
// (compilers turn the scalar form's clamps into compare-and-blend chains) and leaner: a
// degree-5 polynomial (2.5e-7 relative, ~4 ulp), 2^n added to the exponent bits rather
// than multiplied, t clamped to [-126, 127] so that stays a normal float. Below 2^-126 of
// the centre's weight the result is 2^-126 * p instead of the true, smaller value; masked
// positions are zeroed explicitly (`valid`).
inline __m256 exp2_avx2(__m256 t) {
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 shifted = _mm256_add_ps(t, magic);
  const __m256 f = _mm256_sub_ps(t, _mm256_sub_ps(shifted, magic));
  __m256 p = _mm256_set1_ps(0.0013400432653725147f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.009676037356257439f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.05550327152013779f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.2402210682630539f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.6931471824645996f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0000001192092896f));
  // n sits in the low bits of `shifted` (1.5 * 2^23 + n), whose high bits shift out
  const __m256i scale = _mm256_slli_epi32(_mm256_castps_si256(shifted), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), scale));
}

template <int PHI>
inline __m256 logit_avx2(__m256 q, __m256 key, __m256 prior) {
  if constexpr (PHI == SQDIFF) {
    const __m256 d = _mm256_sub_ps(q, key);
    return _mm256_fnmadd_ps(d, d, prior);
  } else if constexpr (PHI == ABSDIFF) {
    return _mm256_sub_ps(prior, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(q, key)));
  } else {
    return _mm256_fmadd_ps(q, key, prior);
  }
}

// UNIT: stride 1, where window column dj sits at offset dj (colof[dj] == dj, known here).
template <int PHI, bool BORDER, bool UNIT>
void tile_exps_avx2(const Shape& sh, const float* __restrict__ kp, int64_t prow0, const float* __restrict__ prior,
                    int64_t j0, const float* __restrict__ qv, const float* __restrict__ bias,
                    const float* __restrict__ valid, const float* __restrict__ lane, Rows rows, float* __restrict__ e,
                    float* __restrict__ inv) {
  const float* base = kp + prow0 * sh.Wp + j0;
  const __m256 q = _mm256_loadu_ps(qv);
  const __m256 l2e = _mm256_set1_ps(log2e<float>());
  const __m256 centre = logit_avx2<PHI>(q, _mm256_loadu_ps(base + sh.r * sh.Wp + (UNIT ? sh.r : sh.colof[sh.r])),
                                        _mm256_set1_ps(prior[sh.r * sh.k + sh.r]));
  const __m256 shift = _mm256_mul_ps(centre, _mm256_set1_ps(-log2e<float>()));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    const float* krow = base + di * sh.Wp;
    const float* prow = prior + di * sh.k;
    float* erow = e + di * sh.k * 8;
    for (int64_t dj = 0; dj < sh.k; ++dj) {
      const __m256 l = logit_avx2<PHI>(q, _mm256_loadu_ps(krow + (UNIT ? dj : sh.colof[dj])), _mm256_set1_ps(prow[dj]));
      __m256 v = exp2_avx2(_mm256_fmadd_ps(l, l2e, shift));
      if constexpr (BORDER) v = _mm256_and_ps(v, _mm256_loadu_ps(valid + dj * 8));
      _mm256_storeu_ps(erow + dj * 8, v);
      sum = _mm256_add_ps(sum, v);
    }
  }
  if (_mm256_movemask_ps(_mm256_cmp_ps(sum, _mm256_set1_ps(sum_limit<float>()), _CMP_NLT_UQ)) != 0) {
    alignas(32) float sums[8];
    tile_exps_exact<float, PHI, 8, BORDER>(sh, base, prior, qv, bias, rows, e, sums);
    sum = _mm256_load_ps(sums);
  }
  _mm256_storeu_ps(inv, _mm256_div_ps(_mm256_loadu_ps(lane), sum));
}
#endif

template <typename T, int PHI, int TILE>
inline void tile_exps_any(const Shape& sh, const T* kp, int64_t prow0, const T* prior, int64_t j0, const T* qv,
                          const ColumnMasks<T, TILE>& masks, int64_t t, Rows rows, T* e, T* inv) {
  const T* bias = masks.bias.data() + t * sh.k * TILE;
  const T* lane = masks.lane.data() + t * TILE;
#ifdef LRPROF_AVX2
  if constexpr (std::is_same_v<T, float> && TILE == 8) {
    const T* valid = masks.valid.data() + t * sh.k * TILE;
    const bool unit = sh.s == 1;
    if (masks.interior[t]) {
      unit ? tile_exps_avx2<PHI, false, true>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv)
           : tile_exps_avx2<PHI, false, false>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv);
    } else {
      unit ? tile_exps_avx2<PHI, true, true>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv)
           : tile_exps_avx2<PHI, true, false>(sh, kp, prow0, prior, j0, qv, bias, valid, lane, rows, e, inv);
    }
    return;
  }
#endif
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

#ifdef LRPROF_AVX2
// The forward's hot loop for float, stride 1: one sweep over the window that takes each
// position's logit and exponential (kept in e for channels beyond the first CB) and
// multiply-adds it into CB channel accumulators held in registers, then writes those CB
// rows of y. Returns false, writing nothing, when some sum reached `sum_limit` (the caller
// then redoes the tile relative to the true maximum).
template <int PHI, bool BORDER, int CB, bool KEEP, bool UNIT>
bool tile_fused_avx2(const Shape& sh, const float* __restrict__ kp, const float* __restrict__ xp, int64_t plane,
                     int64_t prow0, const float* __restrict__ prior, int64_t j0, const float* __restrict__ qv,
                     const float* __restrict__ valid, const float* __restrict__ lane, Rows rows,
                     float* __restrict__ e, float* __restrict__ inv, float* const* __restrict__ out) {
  const float* kbase = kp + prow0 * sh.Wp + j0;
  const float* xbase = xp + prow0 * sh.Wp + j0;
  const __m256 q = _mm256_loadu_ps(qv);
  const __m256 l2e = _mm256_set1_ps(log2e<float>());
  const __m256 centre = logit_avx2<PHI>(q, _mm256_loadu_ps(kbase + sh.r * sh.Wp + (UNIT ? sh.r : sh.colof[sh.r])),
                                        _mm256_set1_ps(prior[sh.r * sh.k + sh.r]));
  const __m256 shift = _mm256_mul_ps(centre, _mm256_set1_ps(-log2e<float>()));
  __m256 sum = _mm256_setzero_ps();
  __m256 acc[CB];
  for (int cc = 0; cc < CB; ++cc) acc[cc] = _mm256_setzero_ps();
  for (int64_t di = rows.lo; di < rows.hi; ++di) {
    const float* krow = kbase + di * sh.Wp;
    const float* xrow = xbase + di * sh.Wp;
    const float* prow = prior + di * sh.k;
    float* erow = e + di * sh.k * 8;
    // one window position (a lambda: gcc schedules it better than the same body inline)
    auto position = [&](int64_t dj) {
      const int64_t col = UNIT ? dj : sh.colof[dj];
      const __m256 l = logit_avx2<PHI>(q, _mm256_loadu_ps(krow + col), _mm256_set1_ps(prow[dj]));
      __m256 v = exp2_avx2(_mm256_fmadd_ps(l, l2e, shift));
      if constexpr (BORDER) v = _mm256_and_ps(v, _mm256_loadu_ps(valid + dj * 8));
      if constexpr (KEEP) _mm256_storeu_ps(erow + dj * 8, v);
      sum = _mm256_add_ps(sum, v);
#pragma GCC unroll 8
      for (int cc = 0; cc < CB; ++cc) acc[cc] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xrow + cc * plane + col), acc[cc]);
    };
    for (int64_t dj = 0; dj < sh.k; ++dj) position(dj);
  }
  if (_mm256_movemask_ps(_mm256_cmp_ps(sum, _mm256_set1_ps(sum_limit<float>()), _CMP_NLT_UQ)) != 0) return false;
  const __m256 scale = _mm256_div_ps(_mm256_loadu_ps(lane), sum);
  _mm256_storeu_ps(inv, scale);
  const int64_t n = std::min<int64_t>(8, sh.Wo - j0);
  for (int cc = 0; cc < CB; ++cc) {
    const __m256 y = _mm256_mul_ps(acc[cc], scale);
    if (n == 8) {
      _mm256_storeu_ps(out[cc] + j0, y);
    } else {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, y);
      std::memcpy(out[cc] + j0, lanes, n * sizeof(float));
    }
  }
  return true;
}

// The fused sweep for the first CB channels of a group (CB = 8, 4, 2 or 1, at most mc),
// the other channels from the kept e; false when the tile must be redone.
template <int PHI, bool UNIT>
bool forward_tile_avx2(const Shape& sh, const float* kp, const float* xp, int64_t plane, int64_t prow0,
                       const float* prior, int64_t j0, const float* qv, const ColumnMasks<float, 8>& masks, int64_t t,
                       Rows rows, float* e, float* inv, float* yrow, int64_t mc) {
  const float* valid = masks.valid.data() + t * sh.k * 8;
  const float* lane = masks.lane.data() + t * 8;
  const bool border = !masks.interior[t];
  float* out[8];
  for (int cc = 0; cc < 8; ++cc) out[cc] = yrow + std::min<int64_t>(cc, mc - 1) * sh.Ho * sh.Wo;
  const int cb = mc >= 8 ? 8 : mc >= 4 ? 4 : mc >= 2 ? 2 : 1;
  bool ok;
#define LRPROF_FUSED(CB, KEEP)                                                                              \
  ok = border ? tile_fused_avx2<PHI, true, CB, KEEP, UNIT>(sh, kp, xp, plane, prow0, prior, j0, qv, valid, lane,   \
                                                           rows, e, inv, out)                                        \
              : tile_fused_avx2<PHI, false, CB, KEEP, UNIT>(sh, kp, xp, plane, prow0, prior, j0, qv, valid, lane,  \
                                                            rows, e, inv, out)
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
  for (; c + 8 <= mc; c += 8) aggregate_block<float, PHI, 8, 8>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
  for (; c + 4 <= mc; c += 4) aggregate_block<float, PHI, 8, 4>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
  for (; c < mc; ++c) aggregate_block<float, PHI, 8, 1>(sh, xp, plane, prow0, e, inv, j0, rows, yrow, c);
  return true;
}
#endif

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
#ifdef LRPROF_AVX2
          if constexpr (std::is_same_v<T, float> && TILE == 8) {
            const bool done =
                sh.s == 1 ? forward_tile_avx2<PHI, true>(sh, kp, xp, plane, prow0, prior + g * sh.K2, j0, qv, masks, t,
                                                         rows, e, inv, yrow, mc)
                          : forward_tile_avx2<PHI, false>(sh, kp, xp, plane, prow0, prior + g * sh.K2, j0, qv, masks, t,
                                                          rows, e, inv, yrow, mc);
            if (done) continue;
          }
#endif
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

template <typename T, int PHI, int TILE>
void backward_impl(const Shape& sh, const T* dy, const T* x, const T* query, const T* key, const T* prior,
                   T* dx, T* dquery, T* dkey, T* dprior_parts) {
  // Tasks: (batch, group) with whole planes, so that the scatter of grad_x and grad_key
  // into the window positions stays inside one task (no two threads write one element).
  const int64_t threads = at::get_num_threads();
  const int64_t Hp = std::max((sh.Ho - 1) * sh.s + sh.k, sh.H + sh.r);
  const int64_t plane = Hp * sh.Wp;
  const int64_t per_thread = (2 * sh.m + 2) * plane + 2 * sh.K2 * TILE + (sh.m + 4) * TILE;
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

at::Tensor relation(const at::Tensor& x_, const at::Tensor& query_, const at::Tensor& key_,
                    const at::Tensor& prior_, int64_t k, int64_t m, int64_t stride, c10::string_view phi) {
  check_inputs(x_, query_, key_, prior_, k, m, stride);
  const int code = phi_code(phi);
  const at::Tensor x = x_.contiguous(), query = query_.contiguous(), key = key_.contiguous(),
                   prior = prior_.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), query.size(2), query.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrprof_fused::relation", [&] {
    constexpr int TILE = tile_of<scalar_t>();
    const Shape sh = make_shape<TILE>(x, query, k, m, stride);
    with_phi(code, [&](auto phi_c) {
      forward_impl<scalar_t, decltype(phi_c)::value, TILE>(
          sh, x.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(),
          prior.data_ptr<scalar_t>(), y.data_ptr<scalar_t>());
    });
  });
  return y;
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
    constexpr int TILE = tile_of<scalar_t>();
    const Shape sh = make_shape<TILE>(x, query, k, m, stride);
    with_phi(code, [&](auto phi_c) {
      backward_impl<scalar_t, decltype(phi_c)::value, TILE>(
          sh, grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(),
          key.data_ptr<scalar_t>(), prior.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
          dquery.data_ptr<scalar_t>(), dkey.data_ptr<scalar_t>(), parts.data_ptr<scalar_t>());
    });
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
  lib.def(
      "relation_backward(Tensor grad, Tensor x, Tensor query, Tensor key, Tensor prior, int k, int m, "
      "int stride, str phi) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lrprof_fused, CPU, lib) {
  lib.impl("relation", &relation);
  lib.impl("relation_backward", &relation_backward);
}
