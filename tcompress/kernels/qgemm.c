// Group-wise quantized matrix products for QuantLinear on CPU, fp32 activations:
//   y[m, n] = bias[n] + sum_k x[m, k] * scale[n, g] * (code[n, k] - zero[n, g]),  g = k / group
// Codes are tcompress's packing: 8 bits one byte each; 4 bits two to a byte, the even column in
// the low nibble. Scales and zeros are fp16 [n, K / group]. Each output row's weights are read
// once per call and used for all M input rows, so the cost is the weight bytes, not M.
// Needs K and group to be multiples of 32. Built with AVX2/FMA/F16C where the CPU has them,
// portable C otherwise.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define TC_AVX2 1
#endif

static float half_to_float(uint16_t h) {
#ifdef TC_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {  // zero or subnormal
        if (mant == 0) { bits = sign; } else {
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

// One output row's weights, decoded to floats in `w` [K]. For 4 bits the columns come in the
// order of `permute_x4`: in every 32 columns, the 16 even ones, then the 16 odd ones.
static void decode_row(const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, int K, int group,
                       int bits, float *w) {
    for (int g0 = 0; g0 < K; g0 += group) {
        float s = half_to_float(scales[g0 / group]);
        float sz = -s * half_to_float(zeros[g0 / group]);
#ifdef TC_AVX2
        __m256 vs = _mm256_set1_ps(s), vsz = _mm256_set1_ps(sz);
        if (bits == 8) {
            for (int k = g0; k < g0 + group; k += 8) {
                __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + k))));
                _mm256_storeu_ps(w + k, _mm256_fmadd_ps(c, vs, vsz));
            }
        } else {
            const __m128i low = _mm_set1_epi8(0x0f);
            for (int k = g0; k < g0 + group; k += 32) {
                __m128i b = _mm_loadu_si128((const __m128i *)(q + k / 2));
                __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
                __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
                for (int p = 0; p < 4; p++) {
                    __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[p]));
                    _mm256_storeu_ps(w + k + 8 * p, _mm256_fmadd_ps(c, vs, vsz));
                }
            }
        }
#else
        for (int k = g0; k < g0 + group; k++) {
            int code;
            if (bits == 8) {
                code = q[k];
            } else {  // position k of the permuted order: chunk c, slot j
                int c = k & ~31, j = k & 31, col = j < 16 ? c + 2 * j : c + 2 * (j - 16) + 1;
                code = (q[col / 2] >> (4 * (col & 1))) & 0xf;
            }
            w[k] = code * s + sz;
        }
#endif
    }
}

#ifdef TC_AVX2
static float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

static float dot(const float *a, const float *b, int K) {
#ifdef TC_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 16), _mm256_loadu_ps(b + k + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 24), _mm256_loadu_ps(b + k + 24), acc3);
    }
    for (; k < K; k += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
    return hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
#else
    float s = 0.f;
    for (int k = 0; k < K; k++) s += a[k] * b[k];
    return s;
#endif
}

// out[r * stride] = w . x_r for four rows x_r = x + r * K: each weight vector is loaded once for all four.
static void dot4(const float *w, const float *x, int K, float *out, size_t stride) {
#ifdef TC_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * (size_t)K, *x3 = x + 3 * (size_t)K;
    for (int k = 0; k < K; k += 16) {
        __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + k), a0);
        a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1 + k), a1);
        a2 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x2 + k), a2);
        a3 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x3 + k), a3);
        b0 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x0 + k + 8), b0);
        b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1 + k + 8), b1);
        b2 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x2 + k + 8), b2);
        b3 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x3 + k + 8), b3);
    }
    out[0] = hsum(_mm256_add_ps(a0, b0));
    out[stride] = hsum(_mm256_add_ps(a1, b1));
    out[2 * stride] = hsum(_mm256_add_ps(a2, b2));
    out[3 * stride] = hsum(_mm256_add_ps(a3, b3));
#else
    for (int r = 0; r < 4; r++) out[r * stride] = dot(w, x + (size_t)r * K, K);
#endif
}

// x [M, K] into the column order of decode_row for 4 bits.
static void permute_x4(const float *x, int M, int K, float *out) {
    for (int m = 0; m < M; m++) {
        const float *row = x + (size_t)m * K;
        float *dst = out + (size_t)m * K;
        for (int c = 0; c < K; c += 32)
            for (int j = 0; j < 16; j++) {
                dst[c + j] = row[c + 2 * j];
                dst[c + 16 + j] = row[c + 2 * j + 1];
            }
    }
}

static int supported(int K, int group, int bits) {
    return (bits == 4 || bits == 8) && K % 32 == 0 && group % 32 == 0 && K % group == 0;
}

// y [M, N] = x [M, K] times the quantized weight, plus bias. Returns 0, or -1 when the shapes
// are not supported (the caller then takes the reference path).
int tc_qgemm_f32(const float *x, int M, int K, const uint8_t *q, int N, const uint16_t *scales,
                 const uint16_t *zeros, int group, int bits, const float *bias, float *y, int threads) {
    if (!supported(K, group, bits)) return -1;
    const float *xs = x;
    float *permuted = NULL;
    if (bits == 4) {
        permuted = (float *)malloc(sizeof(float) * (size_t)M * K);
        if (!permuted) return -1;
        permute_x4(x, M, K, permuted);
        xs = permuted;
    }
    const size_t row_bytes = (size_t)K * bits / 8;
    const int groups = K / group;
#pragma omp parallel num_threads(threads)
    {
        float *w = (float *)malloc(sizeof(float) * (size_t)K);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            decode_row(q + n * row_bytes, scales + (size_t)n * groups, zeros + (size_t)n * groups, K, group, bits, w);
            int m = 0;
            for (; m + 4 <= M; m += 4) dot4(w, xs + (size_t)m * K, K, y + (size_t)m * N + n, N);
            for (; m < M; m++) y[(size_t)m * N + n] = dot(w, xs + (size_t)m * K, K);
            if (bias)
                for (int r = 0; r < M; r++) y[(size_t)r * N + n] += bias[n];
        }
        free(w);
    }
    free(permuted);
    return 0;
}

// y [M, N] = x [M, K] times a float weight w [N, K], plus bias (K a multiple of 16).
void tc_gemm_f32(const float *x, int M, int K, const float *w, int N, const float *bias, float *y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int n = 0; n < N; n++) {
        const float *row = w + (size_t)n * K;
        int m = 0;
        for (; m + 4 <= M; m += 4) dot4(row, x + (size_t)m * K, K, y + (size_t)m * N + n, N);
        for (; m < M; m++) y[(size_t)m * N + n] = dot(row, x + (size_t)m * K, K);
        if (bias)
            for (int r = 0; r < M; r++) y[(size_t)r * N + n] += bias[n];
    }
}

// The same product with the activations rounded to int8 per block of 32 (scale max|x| / 127),
// as llama.cpp does on CPU: the codes then multiply as integers (AVX2 maddubs), several times
// fewer instructions a weight than converting them to float. For block b of group g:
//   sum_j x_j s (q_j - z)  ~  s * d_b * (sum_j xq_j q_j - z * sum_j xq_j)
// 8-bit codes are offset to signed (q - 128) so that the pairwise int16 sums cannot saturate.
#define TC_MAX_GEMV_ROWS 32

static void quantize_blocks(const float *x, int M, int K, int bits, int8_t *xq, float *d, float *zx, int group) {
    const int blocks = K / 32, per_group = group / 32;
    for (int m = 0; m < M; m++) {
        const float *row = x + (size_t)m * K;
        for (int b = 0; b < blocks; b++) {
            float v[32], amax = 0.f;
            for (int j = 0; j < 32; j++) {
                int col = bits == 4 ? (j < 16 ? 2 * j : 2 * (j - 16) + 1) : j;
                v[j] = row[b * 32 + col];
                float a = v[j] < 0 ? -v[j] : v[j];
                if (a > amax) amax = a;
            }
            float scale = amax / 127.f, inverse = amax > 0 ? 127.f / amax : 0.f;
            int sum = 0;
            for (int j = 0; j < 32; j++) {
                int code = (int)lrintf(v[j] * inverse);
                xq[(size_t)m * K + b * 32 + j] = (int8_t)code;
                sum += code;
            }
            d[(size_t)m * blocks + b] = scale;
            // sum_b d_b * sum_j xq_j over each group: the zero point's share, the same for every row n
            if (b % per_group == 0) zx[(size_t)m * (K / group) + b / per_group] = 0.f;
            zx[(size_t)m * (K / group) + b / per_group] += scale * (float)sum;
        }
    }
}

// One weight row n against R (1, 2 or 4: a constant once inlined, so the sums stay in
// registers) consecutive input rows from m0.
static inline __attribute__((always_inline)) void i8_rows(const int R, const uint8_t *codes, int bits, int K,
                                                          int group, const uint16_t *row_scales,
                                                          const uint16_t *row_zeros, const int8_t *xq,
                                                          const float *d, const float *zx, int m0,
                                                          const float *bias, int n, int N, float *y) {
    const int blocks = K / 32, groups = K / group, per_group = group / 32;
    const float offset = bits == 8 ? 128.f : 0.f;
    float correction[4] = {0.f, 0.f, 0.f, 0.f};
#ifdef TC_AVX2
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0f), flip = _mm256_set1_epi8((char)0x80);
    // two sums a row, alternating by block, so consecutive FMAs do not wait on each other
    __m256 even[4], odd[4];
    for (int r = 0; r < R; r++) even[r] = odd[r] = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const float s = half_to_float(row_scales[g]), z = half_to_float(row_zeros[g]) - offset;
        const __m256 vs = _mm256_set1_ps(s);
        for (int b = g * per_group; b < (g + 1) * per_group; b++) {
            __m256i c;
            if (bits == 4) {  // 16 bytes: low nibbles (even columns), then high ones (odd)
                __m128i packed = _mm_loadu_si128((const __m128i *)(codes + b * 16));
                c = _mm256_and_si256(
                    _mm256_inserti128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1), low);
            } else {  // signed q - 128
                c = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(codes + b * 32)), flip);
            }
            for (int r = 0; r < R; r++) {
                const size_t m = (size_t)(m0 + r);
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + m * K + b * 32));
                // 8 bits: |c| as unsigned (|-128| = 128 fits), x carries c's sign
                __m256i pairs = bits == 4 ? _mm256_maddubs_epi16(c, xv)
                                          : _mm256_maddubs_epi16(_mm256_abs_epi8(c), _mm256_sign_epi8(xv, c));
                __m256 sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                __m256 scale = _mm256_mul_ps(vs, _mm256_broadcast_ss(d + m * blocks + b));
                if (b & 1) odd[r] = _mm256_fmadd_ps(sums, scale, odd[r]);
                else even[r] = _mm256_fmadd_ps(sums, scale, even[r]);
            }
        }
        for (int r = 0; r < R; r++) correction[r] += s * z * zx[(size_t)(m0 + r) * groups + g];
    }
    for (int r = 0; r < R; r++)
        y[(size_t)(m0 + r) * N + n] = hsum(_mm256_add_ps(even[r], odd[r])) - correction[r] + (bias ? bias[n] : 0.f);
#else
    float total[4] = {0.f, 0.f, 0.f, 0.f};
    for (int g = 0; g < groups; g++) {
        const float s = half_to_float(row_scales[g]), z = half_to_float(row_zeros[g]) - offset;
        for (int b = g * per_group; b < (g + 1) * per_group; b++) {
            int c[32];
            for (int j = 0; j < 32; j++)
                c[j] = bits == 4 ? (j < 16 ? codes[b * 16 + j] & 0xf : codes[b * 16 + j - 16] >> 4)
                                 : (int)codes[b * 32 + j] - 128;
            for (int r = 0; r < R; r++) {
                const size_t m = (size_t)(m0 + r);
                int sum = 0;
                for (int j = 0; j < 32; j++) sum += c[j] * xq[m * K + b * 32 + j];
                total[r] += s * d[m * blocks + b] * (float)sum;
            }
        }
        for (int r = 0; r < R; r++) correction[r] += s * z * zx[(size_t)(m0 + r) * groups + g];
    }
    for (int r = 0; r < R; r++) y[(size_t)(m0 + r) * N + n] = total[r] - correction[r] + (bias ? bias[n] : 0.f);
#endif
}

#ifdef TC_AVX2
// Bytes ahead of the 8-bit codes being read that are prefetched (half as far for 4 bits): the
// two rows' interleaved reads defeat the hardware prefetcher on weights streamed from memory
// (8 bits: 7.5 GB/s without, 15 with, measured).
#define TC_PREFETCH 2048

// One or two input rows (M, a constant once inlined, as BITS) against two weight rows at
// once: each block of codes is decoded once for both inputs, each block of x and its scale
// loaded once for both weight rows, and the independent sums keep the vector units busy
// (about 1.7x the rate of one row at a time, measured). out[r * M + m]: weight row r, input m.
static inline __attribute__((always_inline)) void i8_two_rows(const int BITS, const int M,
                                                              const uint8_t *const codes[2],
                                                              const uint16_t *const row_scales[2],
                                                              const uint16_t *const row_zeros[2], int K, int group,
                                                              const int8_t *xq, const float *d, const float *zx,
                                                              float *out) {
    const int groups = K / group, per_group = group / 32, blocks = K / 32;
    const float offset = BITS == 8 ? 128.f : 0.f;
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0f), flip = _mm256_set1_epi8((char)0x80);
    __m256 sums[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()}, {_mm256_setzero_ps(), _mm256_setzero_ps()}};
    float correction[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    for (int g = 0; g < groups; g++) {
        __m256 vs[2];
        for (int r = 0; r < 2; r++) {
            const float s = half_to_float(row_scales[r][g]), sz = s * (half_to_float(row_zeros[r][g]) - offset);
            for (int m = 0; m < M; m++) correction[r][m] += sz * zx[(size_t)m * groups + g];
            vs[r] = _mm256_set1_ps(s);
        }
        for (int b = g * per_group; b < (g + 1) * per_group; b++) {
            __m256i xv[2];
            __m256 db[2];
            for (int m = 0; m < M; m++) {
                xv[m] = _mm256_loadu_si256((const __m256i *)(xq + (size_t)m * K + b * 32));
                db[m] = _mm256_broadcast_ss(d + (size_t)m * blocks + b);
            }
            for (int r = 0; r < 2; r++) {
                __m256i c;
                if (BITS == 4) {
                    _mm_prefetch((const char *)(codes[r] + b * 16 + TC_PREFETCH / 2), _MM_HINT_T0);
                    __m128i packed = _mm_loadu_si128((const __m128i *)(codes[r] + b * 16));
                    c = _mm256_and_si256(
                        _mm256_inserti128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1), low);
                } else {
                    _mm_prefetch((const char *)(codes[r] + b * 32 + TC_PREFETCH), _MM_HINT_T0);
                    c = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(codes[r] + b * 32)), flip);
                }
                for (int m = 0; m < M; m++) {
                    // 8 bits: |c| as unsigned (|-128| = 128 fits), x carries c's sign
                    const __m256i pairs = BITS == 4 ? _mm256_maddubs_epi16(c, xv[m])
                                                    : _mm256_maddubs_epi16(_mm256_abs_epi8(c), _mm256_sign_epi8(xv[m], c));
                    const __m256 block = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    sums[r][m] = _mm256_fmadd_ps(block, _mm256_mul_ps(vs[r], db[m]), sums[r][m]);
                }
            }
        }
    }
    for (int r = 0; r < 2; r++)
        for (int m = 0; m < M; m++) out[r * M + m] = hsum(sums[r][m]) - correction[r][m];
}
#endif

// Several layers that read the same x (q, k and v; gate and up), in one call: x is rounded
// once and the threads share out the rows of all of them. Layer i: codes q[i] [N[i], K],
// scales and zeros [N[i], K / group], bias[i] or NULL, output y[i] [M, N[i]].
int tc_qgemv_i8_multi(const float *x, int M, int K, int count, const uint8_t *const *q, const int *N,
                      const uint16_t *const *scales, const uint16_t *const *zeros, const float *const *bias,
                      float *const *y, int group, int bits, int threads) {
    if (!supported(K, group, bits) || M > TC_MAX_GEMV_ROWS || count > 16) return -1;
    const int blocks = K / 32, groups = K / group;
    int start[17] = {0};
    for (int i = 0; i < count; i++) start[i + 1] = start[i] + N[i];
    int8_t *xq = (int8_t *)malloc((size_t)M * K);
    float *d = (float *)malloc(sizeof(float) * (size_t)M * blocks);
    float *zx = (float *)malloc(sizeof(float) * (size_t)M * groups);
    if (!xq || !d || !zx) { free(xq); free(d); free(zx); return -1; }
    quantize_blocks(x, M, K, bits, xq, d, zx, group);
    const size_t row_bytes = (size_t)K * bits / 8;
#ifdef TC_AVX2
    if (M <= 2) {  // decoding one or two sequences: two weight rows at a time (a pair may span two layers)
        const int total = start[count];
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int pair = 0; pair < (total + 1) / 2; pair++) {
            const uint8_t *codes[2];
            const uint16_t *row_scales[2], *row_zeros[2];
            int layer[2], n[2];
            for (int r = 0; r < 2; r++) {
                const int row = 2 * pair + r < total ? 2 * pair + r : total - 1;  // an odd count repeats the last
                int i = 0;
                while (row >= start[i + 1]) i++;
                layer[r] = i, n[r] = row - start[i];
                codes[r] = q[i] + n[r] * row_bytes;
                row_scales[r] = scales[i] + (size_t)n[r] * groups, row_zeros[r] = zeros[i] + (size_t)n[r] * groups;
            }
            float out[4];
            if (M == 1) {
                if (bits == 4) i8_two_rows(4, 1, codes, row_scales, row_zeros, K, group, xq, d, zx, out);
                else i8_two_rows(8, 1, codes, row_scales, row_zeros, K, group, xq, d, zx, out);
            } else {
                if (bits == 4) i8_two_rows(4, 2, codes, row_scales, row_zeros, K, group, xq, d, zx, out);
                else i8_two_rows(8, 2, codes, row_scales, row_zeros, K, group, xq, d, zx, out);
            }
            for (int r = 0; r < (2 * pair + 1 < total ? 2 : 1); r++) {
                const int i = layer[r];
                for (int m = 0; m < M; m++)
                    y[i][(size_t)m * N[i] + n[r]] = out[r * M + m] + (bias[i] ? bias[i][n[r]] : 0.f);
            }
        }
        free(xq);
        free(d);
        free(zx);
        return 0;
    }
#endif
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int row = 0; row < start[count]; row++) {
        int i = 0;
        while (row >= start[i + 1]) i++;
        const int n = row - start[i];
        const uint8_t *codes = q[i] + n * row_bytes;
        const uint16_t *row_scales = scales[i] + (size_t)n * groups, *row_zeros = zeros[i] + (size_t)n * groups;
        int m = 0;
        for (; m + 4 <= M; m += 4) i8_rows(4, codes, bits, K, group, row_scales, row_zeros, xq, d, zx, m, bias[i], n, N[i], y[i]);
        for (; m + 2 <= M; m += 2) i8_rows(2, codes, bits, K, group, row_scales, row_zeros, xq, d, zx, m, bias[i], n, N[i], y[i]);
        for (; m < M; m++) i8_rows(1, codes, bits, K, group, row_scales, row_zeros, xq, d, zx, m, bias[i], n, N[i], y[i]);
    }
    free(xq);
    free(d);
    free(zx);
    return 0;
}

int tc_qgemv_i8(const float *x, int M, int K, const uint8_t *q, int N, const uint16_t *scales,
                const uint16_t *zeros, int group, int bits, const float *bias, float *y, int threads) {
    return tc_qgemv_i8_multi(x, M, K, 1, &q, &N, &scales, &zeros, &bias, &y, group, bits, threads);
}

// The float weight [N, K] (for 4 bits in the column order of decode_row), for a BLAS product.
int tc_dequantize(const uint8_t *q, int N, int K, const uint16_t *scales, const uint16_t *zeros, int group,
                  int bits, float *w, int threads) {
    if (!supported(K, group, bits)) return -1;
    const size_t row_bytes = (size_t)K * bits / 8;
    const int groups = K / group;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int n = 0; n < N; n++)
        decode_row(q + n * row_bytes, scales + (size_t)n * groups, zeros + (size_t)n * groups, K, group, bits,
                   w + (size_t)n * K);
    return 0;
}

// W8A8: y [M, N] = (xq [M, K] . wq [N, K], exact in int32) * xs[m] * ws[n] + bias[n], codes in [-127, 127].
static int32_t dot_i8(const int8_t *a, const int8_t *b, int K) {
    int k = 0;
    int32_t total = 0;
#ifdef TC_AVX2
    __m256i acc = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    for (; k + 32 <= K; k += 32) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + k)), vb = _mm256_loadu_si256((const __m256i *)(b + k));
        // |a| (unsigned) times b with a's sign: pairs summed to int16 (at most 2 * 127 * 127), then to int32
        __m256i products = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(products, ones));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    total = _mm_cvtsi128_si32(s);
#endif
    for (; k < K; k++) total += (int32_t)a[k] * b[k];
    return total;
}

void tc_int8_gemm(const int8_t *xq, const float *xs, int M, int K, const int8_t *wq, const float *ws, int N,
                  const float *bias, float *y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int n = 0; n < N; n++) {
        const int8_t *row = wq + (size_t)n * K;
        for (int m = 0; m < M; m++) {
            float value = (float)dot_i8(xq + (size_t)m * K, row, K) * xs[m] * ws[n];
            y[(size_t)m * N + n] = bias ? value + bias[n] : value;
        }
    }
}

int tc_simd(void) {
#ifdef TC_AVX2
    return 1;
#else
    return 0;
#endif
}

// ---- the float parts of a decode step (fp32, contiguous rows) ----

// out [M, D] = x * rsqrt(mean(x^2) + eps) * weight
void tc_rms_norm(const float *x, int M, int D, const float *weight, float eps, float *out) {
    for (int m = 0; m < M; m++) {
        const float *row = x + (size_t)m * D;
        float *dst = out + (size_t)m * D;
        double squares = 0.0;
        for (int i = 0; i < D; i++) squares += (double)row[i] * row[i];
        const float inverse = 1.f / sqrtf((float)(squares / D) + eps);
        for (int i = 0; i < D; i++) dst[i] = row[i] * inverse * weight[i];
    }
}

// Rotary embedding in place on x [rows, heads, dim] for one position a row: with h = dim / 2,
// x[i] <- x[i] cos[i] - x[i + h] sin[i] and x[i + h] <- x[i + h] cos[i + h] + x[i] sin[i + h]
// (cos, sin [rows, dim], as Hugging Face's rotate_half convention; `row_stride` between rows of x).
void tc_rope(float *x, int rows, int heads, int dim, size_t row_stride, const float *cos, const float *sin) {
    const int half = dim / 2;
    for (int r = 0; r < rows; r++)
        for (int head = 0; head < heads; head++) {
            float *v = x + r * row_stride + (size_t)head * dim;
            const float *c = cos + (size_t)r * dim, *s = sin + (size_t)r * dim;
            for (int i = 0; i < half; i++) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
}

// One query a sequence against the first `length` cached keys and values, grouped-query heads:
// q [B, H, dim], keys / values [B, KV, capacity, dim], out [B, H, dim]; scores scaled by `scale`.
void tc_attention_step(const float *q, const float *keys, const float *values, int B, int H, int KV, int capacity,
                       int length, int dim, float scale, float *out, int threads) {
    const int group = H / KV;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const float *query = q + (size_t)bh * dim;
        const size_t cache = ((size_t)b * KV + h / group) * capacity * dim;
        float *scores = (float *)malloc(sizeof(float) * (size_t)length), top = -INFINITY, total = 0.f;
        for (int j = 0; j < length; j++) {
            scores[j] = dot(query, keys + cache + (size_t)j * dim, dim) * scale;
            if (scores[j] > top) top = scores[j];
        }
        for (int j = 0; j < length; j++) total += scores[j] = expf(scores[j] - top);
        float *dst = out + (size_t)bh * dim;
        for (int i = 0; i < dim; i++) dst[i] = 0.f;
        for (int j = 0; j < length; j++) {
            const float p = scores[j] / total, *value = values + cache + (size_t)j * dim;
            for (int i = 0; i < dim; i++) dst[i] += p * value[i];
        }
        free(scores);
    }
}

// out [n] = silu(gate) * up
void tc_silu_mul(const float *gate, const float *up, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = gate[i] / (1.f + expf(-gate[i])) * up[i];
}
