// The column sweep that GPTQ and SparseGPT share (Frantar et al., 2022 and 2023), for one run
// of consecutive columns of a lazy block. The weight is held transposed: row i of `rows`
// ([height, n], row-major) is the weight column i, starting with the first column of the run.
// Each column in turn takes its target value (zero where `keep` says so; on the grid of its
// group where scales are given), its error divided by its pivot goes to `errors`, and
// factor[i, j] times that error is taken off every later row j of the block (j < height).
// The n output channels are independent, so threads split them; each works through all the
// columns on its own slice, which stays in cache. Every operation rounds as torch's does (no
// contraction into FMA under -std=c99), so the codes match the torch loop's.
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define TC_OBS_SLICE 64  // output channels a thread sweeps at a time

// rows      [height, n] float, in place: the run's rows become their final values
// factor    the run's rows of the upper Cholesky factor of H^-1: factor[i * ldf + j], i < count, j < height,
//           the run's first column at j = 0 (so the pivot of column i is factor[i * ldf + i])
// keep      [count, n] bytes, 0 where the weight is pruned; NULL: keep all
// scales, zeros [groups, n] (NULL: no grid) and group [count], the group of each column
// codes     [count, n] bytes out (with a grid), the code of each weight; a pruned one gets its zero
// errors    [count, n] out: (weight - value) / pivot
// Returns 0, or -1 for shapes that do not fit.
int tc_obs_sweep(float *rows, int n, int count, int height, const float *factor, int ldf, const uint8_t *keep,
                 const float *scales, const float *zeros, const int32_t *group, int maxq, uint8_t *codes,
                 float *errors, int threads) {
    if (n <= 0 || count <= 0 || count > height || ldf < height || (scales && (!zeros || !group))) return -1;
    const int slices = (n + TC_OBS_SLICE - 1) / TC_OBS_SLICE;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int slice = 0; slice < slices; slice++) {
        const int lo = slice * TC_OBS_SLICE, hi = lo + TC_OBS_SLICE < n ? lo + TC_OBS_SLICE : n;
        for (int i = 0; i < count; i++) {
            float *w = rows + (size_t)i * n, *e = errors + (size_t)i * n;
            const float pivot = factor[(size_t)i * ldf + i];
            const uint8_t *kept = keep ? keep + (size_t)i * n : NULL;
            const float *s = scales ? scales + (size_t)group[i] * n : NULL;
            const float *z = scales ? zeros + (size_t)group[i] * n : NULL;
            for (int r = lo; r < hi; r++) {
                float value = (kept && !kept[r]) ? 0.0f : w[r];
                if (s) {
                    float q = z[r];
                    if (!kept || kept[r]) {
                        q = rintf(value / s[r] + z[r]);
                        q = q < 0.0f ? 0.0f : (q > (float)maxq ? (float)maxq : q);
                    }
                    if (codes) codes[(size_t)i * n + r] = (uint8_t)q;
                    value = (q - z[r]) * s[r];
                }
                e[r] = (w[r] - value) / pivot;
                w[r] = value;
            }
            for (int j = i + 1; j < height; j++) {
                const float f = factor[(size_t)i * ldf + j];
                float *t = rows + (size_t)j * n;
                for (int r = lo; r < hi; r++) t[r] -= f * e[r];
            }
        }
    }
    return 0;
}
