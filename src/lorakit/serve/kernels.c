/* The lean serving forward's CPU kernels (serve/llama.py), built and loaded by serve/kernels.py.
 *
 * Each works on bf16 rows and computes every row on its own in a fixed order, so that a row's bits never depend
 * on the batch: lk_lora_rows (each row's own adapter), lk_rms_norm, lk_rope_cache (RoPE and the KV-cache writes)
 * and lk_decode_attention. lk_argmax: the greedy choice over bf16 or fp32 logits, for both serving forwards. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define LK_DPBF16 1  /* the attention's q·k with VDPBF16PS (dot_bf16) */
#include <immintrin.h>
#endif

/* ---- LoRA on bf16 rows, for the lean serving forward (lorakit/serve/llama.py) ----
 *
 * For each of n rows i (row rows[i] of x and y, or row i when rows is NULL), with its adapter j = adapter[i]:
 *   t = x_i · A_jᵀ                      (R values; a holds each adapter's Aᵀ: (adapters, in, R))
 *   y_i[c] = bf16(y_i[c] + Σ_k t[k]·B_j[k, c])   for c in each target's span, k over that target's ranks
 * (b holds each adapter's s·Bᵀ over the whole fused output: (adapters, R, width)); the tables are bf16, as the
 * bf16 model holds its factors, widened as they are read. Sums run in fp32 in a fixed order that depends on
 * nothing but the row's own values: a row gets the same bits alone or in any batch. */
static inline float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } c = { .u = (uint32_t)v << 16 };
    return c.f;
}

static inline uint16_t float_to_bf16(float f) {  /* round to nearest even, as torch does; NaN stays NaN */
    union { float f; uint32_t u; } c = { .f = f };
    const uint32_t rounded = (c.u + 0x7fffu + ((c.u >> 16) & 1u)) >> 16;
    const uint32_t nan = (c.u >> 16) | 0x40u;
    return (uint16_t)((c.u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);  /* a select, so loops vectorize */
}

#define MAX_RANK 1024  /* kernels.py's MAX_RANK, MAX_WIDTH and MAX_HEAD: the lean forward checks them up front */
#define MAX_IN 32768
#define MAX_HEAD 1024
#define BLOCK 96  /* output columns per pass of add_update, their sums in registers; then TAIL at a time, then one */
#define TAIL 16

/* t[0 .. count) = sum over j in 0..in-1 (in order) of x[j] * a[j*R + 0 .. count): count is a constant at the
 * main call, so the sums stay in registers. */
#define RANKS 16
static inline __attribute__((always_inline)) void add_inputs(const float *x, const uint16_t *a, int64_t in,
                                                             int64_t R, float *t, const int count) {
    float acc[RANKS] = {0};
    for (int64_t j = 0; j < in; ++j) {
        const float xj = x[j];
        const uint16_t *aj = a + j * R;
        for (int l = 0; l < count; ++l) acc[l] += xj * bf16_to_float(aj[l]);
    }
    for (int l = 0; l < count; ++l) t[l] = acc[l];
}

typedef struct {
    int64_t r0, rank, lo, hi;  /* ranks r0 .. r0+rank-1 of t update columns lo .. hi-1 */
} lk_target;

static inline __attribute__((always_inline)) void add_update(const float *t, const uint16_t *b, int64_t width,
                                                             const lk_target *g, uint16_t *y, int64_t c,
                                                             const int count) {
    float acc[BLOCK] = {0};
    for (int64_t k = g->r0; k < g->r0 + g->rank; ++k) {
        const float tk = t[k];
        const uint16_t *bk = b + k * width + c;
        for (int l = 0; l < count; ++l) acc[l] += tk * bf16_to_float(bk[l]);
    }
    for (int l = 0; l < count; ++l) y[c + l] = float_to_bf16(bf16_to_float(y[c + l]) + acc[l]);
}

int lk_lora_rows(const uint16_t *x, int64_t ldx, uint16_t *y, int64_t ldy, int64_t ny, int64_t adapters,
                 int64_t n, const int64_t *rows,
                 const int64_t *adapter, const uint16_t *a, int64_t in, int64_t R, const uint16_t *b, int64_t width,
                 const lk_target *targets, int64_t ntargets, int threads) {
    if (R > MAX_RANK || in > MAX_IN) return -1;
    for (int64_t i = 0; i < n; ++i)  /* every index is checked before anything is written */
        if (adapter[i] < 0 || adapter[i] >= adapters || (rows ? rows[i] < 0 || rows[i] >= ny : i >= ny)) return -2;
    for (int64_t g = 0; g < ntargets; ++g)
        if (targets[g].r0 < 0 || targets[g].r0 + targets[g].rank > R || targets[g].lo < 0 || targets[g].hi > width)
            return -2;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const int64_t row = rows ? rows[i] : i;
        const uint16_t *xi = x + row * ldx;
        uint16_t *yi = y + row * ldy;
        const uint16_t *ai = a + adapter[i] * in * R;
        const uint16_t *bi = b + adapter[i] * R * width;
        float xf[MAX_IN], t[MAX_RANK];
        for (int64_t j = 0; j < in; ++j) xf[j] = bf16_to_float(xi[j]);
        for (int64_t k0 = 0; k0 < R; k0 += RANKS) {  /* t[k0 .. k0+RANKS) in registers, summed over j in order */
            if (k0 + RANKS <= R) add_inputs(xf, ai + k0, in, R, t + k0, RANKS);
            else add_inputs(xf, ai + k0, in, R, t + k0, (int)(R - k0));
        }
        for (int64_t g = 0; g < ntargets; ++g) {
            const lk_target *tg = &targets[g];
            int64_t c = tg->lo;
            for (; c + BLOCK <= tg->hi; c += BLOCK) add_update(t, bi, width, tg, yi, c, BLOCK);
            for (; c + TAIL <= tg->hi; c += TAIL) add_update(t, bi, width, tg, yi, c, TAIL);
            for (; c < tg->hi; ++c) add_update(t, bi, width, tg, yi, c, 1);
        }
    }
    return 0;
}

/* ---- LlamaRMSNorm on bf16 rows, for the lean serving forward ----
 *
 * out_i = bf16(w * bf16(x_i / sqrt(mean(x_i^2) + eps))), computed in fp32 as transformers' LlamaRMSNorm does,
 * with the sum of squares taken in a fixed order per row: a row gets the same bits alone or in any batch.
 * Replaces six torch ops (the fp32 cast, rms_norm's pow, mean, add and rsqrt, the cast back, the scale). */
#define SQUARES 16

int lk_rms_norm(const uint16_t *x, int64_t ldx, const uint16_t *w, uint16_t *out, int64_t ldo, int64_t n,
                int64_t d, float eps, int threads) {
    if (d <= 0 || d > MAX_IN) return -1;
    #pragma omp parallel for schedule(static) num_threads(threads) if (n * d >= 65536)
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t *xi = x + i * ldx;
        uint16_t *oi = out + i * ldo;
        float lanes[SQUARES] = {0};
        int64_t j = 0;
        for (; j + SQUARES <= d; j += SQUARES)
            for (int l = 0; l < SQUARES; ++l) {
                const float v = bf16_to_float(xi[j + l]);
                lanes[l] += v * v;
            }
        float squares = 0.f;
        for (int l = 0; l < SQUARES; ++l) squares += lanes[l];
        for (; j < d; ++j) {
            const float v = bf16_to_float(xi[j]);
            squares += v * v;
        }
        const float scale = 1.f / sqrtf(squares / (float)d + eps);
        for (j = 0; j < d; ++j) {
            const float normed = bf16_to_float(float_to_bf16(bf16_to_float(xi[j]) * scale));
            oi[j] = float_to_bf16(bf16_to_float(w[j]) * normed);
        }
    }
    return 0;
}

/* ---- RoPE and the KV-cache write, for the lean serving forward ----
 *
 * For each of n rows (tokens) of a fused q,k,v projection, bf16 (nq + 2*nkv heads of hd): rotate the q and k heads
 * in place as transformers applies RoPE in bf16, x*cos + rotate_half(x)*sin with each product and the sum rounded
 * to bf16 (rotate_half(x)*sin computed as roll(x, hd/2) * signed_sin, whose first half is -sin: the same values),
 * and write the row's rotated keys and its values into the caches (slots, nkv, capacity, hd) at
 * (slot[i], head, pos[i]). cos and signed_sin: one row of hd per position. Replaces four ops and two index_put_. */
int lk_rope_cache(uint16_t *qkv, int64_t ld, int64_t n, int64_t nq, int64_t nkv, int64_t hd, const uint16_t *cos,
                  const uint16_t *signed_sin, int64_t positions, const int64_t *pos, const int64_t *slot,
                  uint16_t *keys, uint16_t *values, int64_t slots, int64_t capacity, int threads) {
    if (hd <= 0 || hd > MAX_HEAD || hd % 2) return -1;
    for (int64_t i = 0; i < n; ++i)  /* every index is checked before anything is written */
        if (pos[i] < 0 || pos[i] >= positions || pos[i] >= capacity || slot[i] < 0 || slot[i] >= slots) return -2;
    #pragma omp parallel for schedule(static) num_threads(threads) if (n >= 64)
    for (int64_t i = 0; i < n; ++i) {
        uint16_t *row = qkv + i * ld;
        const uint16_t *c = cos + pos[i] * hd, *s = signed_sin + pos[i] * hd;
        const int64_t half = hd / 2;
        uint16_t rotated[MAX_HEAD];
        for (int64_t h = 0; h < nq + nkv; ++h) {
            uint16_t *x = row + h * hd;
            for (int64_t d = 0; d < hd; ++d) {
                const float a = bf16_to_float(float_to_bf16(bf16_to_float(x[d]) * bf16_to_float(c[d])));
                const uint16_t other = x[d < half ? d + half : d - half];
                const float b = bf16_to_float(float_to_bf16(bf16_to_float(other) * bf16_to_float(s[d])));
                rotated[d] = float_to_bf16(a + b);
            }
            for (int64_t d = 0; d < hd; ++d) x[d] = rotated[d];
            if (h >= nq) {
                uint16_t *k = keys + ((slot[i] * nkv + (h - nq)) * capacity + pos[i]) * hd;
                for (int64_t d = 0; d < hd; ++d) k[d] = rotated[d];
            }
        }
        for (int64_t h = 0; h < nkv; ++h) {
            const uint16_t *v = row + (nq + nkv + h) * hd;
            uint16_t *dst = values + ((slot[i] * nkv + h) * capacity + pos[i]) * hd;
            for (int64_t d = 0; d < hd; ++d) dst[d] = v[d];
        }
    }
    return 0;
}

/* ---- Decode attention over each row's own cache slot, for the lean serving forward ----
 *
 * Row i (one new token of the request in cache slot slot[i], which holds len[i] keys and values, its own
 * included) attends with each of its nq query heads (bf16, in q at row stride ldq) over its own kv head's first
 * len[i] keys (grouped-query: nq / nkv query heads share a kv head): softmax(q·kᵀ·scale)·v, in fp32, each sum in
 * a fixed order, rounded once to bf16 into out (n, nq*hd). A row reads only its own slot, so it gets the same
 * bits alone or in any batch, and attends over exactly its own keys (no padding to a common width). */
/* exp(x) for the softmax's x = score - max <= 0, within 1.5 ulp of exp (worst 8.5e-8 relative over [-87, 0]), as
 * a loop of these vectorizes where one of expf does not (libm's vector expf needs -ffast-math, which would
 * reorder the fixed-order sums): Cephes' expf, exp(r)·2^n with n = round(x·log2 e) by the 1.5·2^23 trick
 * (floorf does not vectorize either) and r = x - n·ln 2 in two parts. Below -87 it returns exp(-87) ~ 1.6e-38
 * instead of a smaller number or 0, a difference under 1e-37 in a sum of at least 1. NaN stays NaN. */
static inline float exp_neg(float x) {
    x = x < -87.f ? -87.f : x;
    const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    union { int32_t i; float f; } e = { .i = ((int32_t)n + 127) << 23 };
    return p * e.f;
}

#define LOCAL_KEYS 4096  /* scores of up to this many keys live on the stack, longer rows allocate */

/* q·k for one key, in a fixed order. Where the CPU has AVX512-BF16 (and -march=native enables it), VDPBF16PS
 * multiplies the bf16 pairs exactly and sums them into 16 fp32 lanes (round to nearest; denormals flushed to
 * zero), then the lanes are added in _mm512_reduce_add_ps's fixed tree: faster, as it skips widening each key
 * to fp32 first. Elsewhere the widened q (qf) against each key widened 16 lanes at a time. */
static inline float dot_bf16(const uint16_t *q, const float *qf, const uint16_t *kt, int64_t hd) {
#ifdef LK_DPBF16
    (void)qf;  /* not filled here: the caller widens q only for the other path */
    __m512 lanes = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= hd; d += 32)
        lanes = _mm512_dpbf16_ps(lanes, (__m512bh)_mm512_loadu_si512(q + d), (__m512bh)_mm512_loadu_si512(kt + d));
    if (d < hd) {
        const __mmask32 rest = (__mmask32)((1ull << (hd - d)) - 1);
        lanes = _mm512_dpbf16_ps(lanes, (__m512bh)_mm512_maskz_loadu_epi16(rest, q + d),
                                 (__m512bh)_mm512_maskz_loadu_epi16(rest, kt + d));
    }
    return _mm512_reduce_add_ps(lanes);
#else
    (void)q;
    float lanes[SQUARES] = {0};
    int64_t d = 0;
    for (; d + SQUARES <= hd; d += SQUARES)
        for (int l = 0; l < SQUARES; ++l) lanes[l] += qf[d + l] * bf16_to_float(kt[d + l]);
    float dot = 0.f;
    for (int l = 0; l < SQUARES; ++l) dot += lanes[l];
    for (; d < hd; ++d) dot += qf[d] * bf16_to_float(kt[d]);
    return dot;
#endif
}

int lk_decode_attention(const uint16_t *q, int64_t ldq, const uint16_t *keys, const uint16_t *values,
                        int64_t slots, int64_t capacity, const int64_t *slot, const int64_t *len, int64_t n,
                        int64_t nq, int64_t nkv, int64_t hd, float scale, uint16_t *out, int64_t ldo, int threads) {
    if (hd <= 0 || hd > MAX_HEAD || nkv <= 0 || nq % nkv) return -1;
    for (int64_t i = 0; i < n; ++i)
        if (slot[i] < 0 || slot[i] >= slots || len[i] <= 0 || len[i] > capacity) return -2;
    const int64_t group = nq / nkv;
    int failed = 0;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < nq; ++h) {
            const uint16_t *qh = q + i * ldq + h * hd;
            const int64_t kv = h / group, count = len[i];
            const uint16_t *k = keys + (slot[i] * nkv + kv) * capacity * hd;
            const uint16_t *v = values + (slot[i] * nkv + kv) * capacity * hd;
            float qf[MAX_HEAD], acc[MAX_HEAD], local[LOCAL_KEYS];
            float *scores = count <= LOCAL_KEYS ? local : malloc(count * sizeof(float));
            if (!scores) {
                #pragma omp atomic write
                failed = 1;
                continue;
            }
#ifndef LK_DPBF16
            for (int64_t d = 0; d < hd; ++d) qf[d] = bf16_to_float(qh[d]);
#endif
            float top = -INFINITY;
            for (int64_t t = 0; t < count; ++t) {
                const float dot = dot_bf16(qh, qf, k + t * hd, hd);
                scores[t] = dot * scale;
                top = scores[t] > top ? scores[t] : top;
            }
            for (int64_t t = 0; t < count; ++t) scores[t] = exp_neg(scores[t] - top);
            float total = 0.f;
            for (int64_t t = 0; t < count; ++t) total += scores[t];
#ifdef LK_DPBF16
            if (hd == 64) {  /* the same sums lane by lane, kept in registers */
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (int64_t t = 0; t < count; ++t) {
                    const __m512 p = _mm512_set1_ps(scores[t]);
                    const __m256i *w = (const __m256i *)(v + t * hd);
                    a0 = _mm512_fmadd_ps(p, _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(w)), a0);
                    a1 = _mm512_fmadd_ps(p, _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(w + 1)), a1);
                    a2 = _mm512_fmadd_ps(p, _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(w + 2)), a2);
                    a3 = _mm512_fmadd_ps(p, _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(w + 3)), a3);
                }
                _mm512_storeu_ps(acc, a0);
                _mm512_storeu_ps(acc + 16, a1);
                _mm512_storeu_ps(acc + 32, a2);
                _mm512_storeu_ps(acc + 48, a3);
            } else
#endif
            {
                for (int64_t d = 0; d < hd; ++d) acc[d] = 0.f;
                for (int64_t t = 0; t < count; ++t) {
                    const float p = scores[t];
                    const uint16_t *vt = v + t * hd;
                    for (int64_t d = 0; d < hd; ++d) acc[d] += p * bf16_to_float(vt[d]);
                }
            }
            uint16_t *o = out + i * ldo + h * hd;
            for (int64_t d = 0; d < hd; ++d) o[d] = float_to_bf16(acc[d] / total);
            if (scores != local) free(scores);
        }
    return failed ? -3 : 0;
}

/* ---- Greedy choice, for both serving forwards ----
 *
 * out[i] = the index of the first maximum of row i of x (n rows of v values, row stride ld; bf16 when is_bf16,
 * else fp32), as torch.max(dim=-1) picks it; a row holding NaN gives its first NaN, as torch.max does. A maximum
 * is exact in any order, so one pass takes the largest value (vectorized) and a second finds where it first is.
 * Both this and torch.max are bound by memory; the gain is reading a bf16 head's output as it is instead of first
 * widening it to fp32 and reading twice the bytes. */
/* Explicit vectors (GCC/clang vector extensions; plain loops with a ternary maximum or an early exit did not
 * vectorize). Three passes per row: the largest value (NaN compares false, so it is the largest of the others;
 * a maximum does not depend on the order), the first j holding it or a NaN, and when that is the maximum,
 * whether a NaN follows. LOADV(p) reads VW values from p as fp32, LOAD1(x) one. */
#define VW 8
typedef float lk_vf __attribute__((vector_size(VW * 4)));
typedef int32_t lk_vi __attribute__((vector_size(VW * 4)));

static inline lk_vf load_f32(const float *p) { lk_vf v; memcpy(&v, p, sizeof v); return v; }
static inline lk_vf load_bf16(const uint16_t *p) {
    lk_vi v;
    for (int l = 0; l < VW; ++l) v[l] = (int32_t)((uint32_t)p[l] << 16);
    return (lk_vf)v;
}
static inline lk_vf vmax(lk_vf a, lk_vf b) { const lk_vi m = a > b; return (lk_vf)((m & (lk_vi)a) | (~m & (lk_vi)b)); }
static inline int any(lk_vi m) {
    int r = 0;
    for (int l = 0; l < VW; ++l) r |= m[l];
    return r;
}
#define ID(x) (x)
#define ARGMAX_ROW(LOADV, LOAD1)                                                                                 \
    lk_vf m0 = -INFINITY - (lk_vf){0}, m1 = m0;                                                                  \
    int64_t j = 0;                                                                                               \
    for (; j + 2 * VW <= v; j += 2 * VW) m0 = vmax(LOADV(row + j), m0), m1 = vmax(LOADV(row + j + VW), m1);     \
    m0 = vmax(m1, m0);                                                                                           \
    float top = -INFINITY;                                                                                       \
    for (int l = 0; l < VW; ++l) top = m0[l] > top ? m0[l] : top;                                               \
    for (; j < v; ++j) top = LOAD1(row[j]) > top ? LOAD1(row[j]) : top;                                          \
    const lk_vf t = top - (lk_vf){0};                                                                            \
    for (j = 0; j + VW <= v; j += VW) {                                                                          \
        const lk_vf x = LOADV(row + j);                                                                          \
        if (any((x == t) | (x != x))) break;                                                                     \
    }                                                                                                            \
    for (; j < v && !(LOAD1(row[j]) == top || LOAD1(row[j]) != LOAD1(row[j])); ++j) {}                           \
    int64_t at = j < v ? j : 0;                                                                                  \
    if (j < v && LOAD1(row[j]) == LOAD1(row[j])) { /* the maximum: the answer unless a NaN follows */            \
        int64_t k = j + 1;                                                                                       \
        for (; k + VW <= v; k += VW) {                                                                           \
            const lk_vf x = LOADV(row + k);                                                                      \
            if (any(x != x)) break;                                                                              \
        }                                                                                                        \
        for (; k < v && LOAD1(row[k]) == LOAD1(row[k]); ++k) {}                                                  \
        if (k < v) at = k;                                                                                       \
    }                                                                                                            \
    out[i] = at;

void lk_argmax(const void *x, int64_t ld, int64_t n, int64_t v, int is_bf16, int64_t *out, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (n > 1)
    for (int64_t i = 0; i < n; ++i) {
        if (is_bf16) {
            const uint16_t *row = (const uint16_t *)x + i * ld;
            ARGMAX_ROW(load_bf16, bf16_to_float)
        } else {
            const float *row = (const float *)x + i * ld;
            ARGMAX_ROW(load_f32, ID)
        }
    }
}
