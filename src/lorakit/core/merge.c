/* lorakit's fused merge kernel, built and loaded by kernel.py.
 *
 * lk_merge: W += sign * s * left @ right for many weights in one parallel pass (lorakit's in-place merge). Each
 * row of W is read once, gets its rank-r update added and is written back; the r rows of `right` under the
 * current block stay in L1. One OpenMP region covers every row of every weight, split evenly over the threads.
 * Per element: acc = sum over k = 0..r-1 of left[i,k] * right[k,j] (in that order), then w += s * acc. */
#include <stdint.h>

typedef struct {
    float *w;            /* rows x cols, row stride ldw, unit column stride */
    const float *left;   /* rows x rank, strides (ls0, ls1) */
    const float *right;  /* rank x cols, row stride ldr, unit column stride */
    int64_t rows, cols, rank, ldw, ls0, ls1, ldr;
    float scale;
} lk_part;

/* 96 floats = six AVX-512 registers of accumulators (faster than 64 or 192 on SmolLM2's q,v weights). The tail
 * goes 16 at a time, then one at a time, same order. */
#define BLOCK 96
#define TAIL 16

/* w[j .. j+width) += s * acc, acc = the update of those columns; width is a constant at each call, so each copy
 * keeps its accumulators in registers. */
static inline __attribute__((always_inline)) void add_columns(const lk_part *p, const float *l, float *w, int64_t j,
                                                              const int width, const float s) {
    float acc[BLOCK] = {0};
    for (int64_t k = 0; k < p->rank; ++k) {
        const float c = l[k * p->ls1];
        const float *r = p->right + k * p->ldr + j;
        for (int t = 0; t < width; ++t) acc[t] += c * r[t];
    }
    for (int t = 0; t < width; ++t) w[j + t] += s * acc[t];
}

static void update_row(const lk_part *p, int64_t i, float sign) {
    float *w = p->w + i * p->ldw;
    const float *l = p->left + i * p->ls0;
    const float s = sign * p->scale;
    int64_t j = 0;
    for (; j + BLOCK <= p->cols; j += BLOCK) add_columns(p, l, w, j, BLOCK, s);
    for (; j + TAIL <= p->cols; j += TAIL) add_columns(p, l, w, j, TAIL, s);
    for (; j < p->cols; ++j) add_columns(p, l, w, j, 1, s);
}

void lk_merge(const lk_part *parts, int64_t n, float sign, int threads) {
    int64_t total = 0;
    for (int64_t m = 0; m < n; ++m) total += parts[m].rows;
    #pragma omp parallel num_threads(threads)
    {
        int64_t m = 0, start = 0;  /* the part holding global row g, and its first global row */
        #pragma omp for schedule(static)
        for (int64_t g = 0; g < total; ++g) {
            while (g >= start + parts[m].rows) start += parts[m++].rows;
            update_row(&parts[m], g - start, sign);
        }
    }
}
