// A whole decode step of a Llama-family model (one new token for each of B sequences) as one
// call: per layer RMSNorm, q/k/v, optional per-head q/k norms (Qwen3), rotary embedding, the
// write into the KV cache, attention over it, o, RMSNorm, gate/up, SiLU, down; then the final
// norm and the head. The same kernels, in the same order, as the step the decoder makes from
// Python one call at a time, without the interpreter between them.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int tc_qgemm_f32(const float *x, int M, int K, const uint8_t *q, int N, const uint16_t *scales,
                 const uint16_t *zeros, int group, int bits, const float *bias, float *y, int threads);
int tc_qgemv_i8_multi(const float *x, int M, int K, int count, const uint8_t *const *q, const int *N,
                      const uint16_t *const *scales, const uint16_t *const *zeros, const float *const *bias,
                      float *const *y, int group, int bits, int threads);
void tc_gemm_f32(const float *x, int M, int K, const float *w, int N, const float *bias, float *y, int threads);
void tc_rms_norm(const float *x, int M, int D, const float *weight, float eps, float *out);
void tc_rope(float *x, int rows, int heads, int dim, size_t row_stride, const float *cos, const float *sin);
void tc_attention_step(const float *q, const float *keys, const float *values, int B, int H, int KV, int capacity,
                       int length, int dim, float scale, float *out, int threads);
void tc_silu_mul(const float *gate, const float *up, int n, float *out);

// A linear layer: a float weight [N, K] (bits 32) or packed codes (4 or 8 bits) with fp16
// scales and zeros [N, K / group]; bias [N] or NULL.
typedef struct {
    const void *weight;
    const uint16_t *scales, *zeros;
    const float *bias;
    int N, K, group, bits;
} tc_linear;

typedef struct {
    const float *input_norm, *post_norm;  // RMSNorm weights [hidden]
    const float *q_norm, *k_norm;         // per-head RMSNorm weights [head_dim] (Qwen3), or NULL
    tc_linear q, k, v, o, gate, up, down;
    float *keys, *values;                 // cache [batch, kv_heads, capacity, head_dim]
} tc_layer;

typedef struct {
    int layers, hidden, heads, kv_heads, head_dim, intermediate, capacity;  // intermediate: the widest layer's
    int int8_rows;                        // int8 activations for packed layers up to this many sequences
    float eps, scale;                     // RMSNorm epsilon, attention scale
    const tc_layer *layer;
    const float *final_norm;
    tc_linear head;
} tc_model;

// y [M, count linears' outputs] for linears reading the same x; one kernel call where they
// share a packed grid and the activations go as int8.
static int linears(const tc_linear *const *ls, int count, const float *x, int M, float *const *y, int int8_rows,
                   int threads) {
    const tc_linear *first = ls[0];
    int shared = first->bits != 32 && M <= int8_rows;
    for (int i = 1; i < count; i++)
        shared = shared && ls[i]->bits == first->bits && ls[i]->K == first->K && ls[i]->group == first->group;
    if (shared) {
        const uint8_t *q[4];
        const uint16_t *scales[4], *zeros[4];
        const float *bias[4];
        int N[4];
        for (int i = 0; i < count; i++) {
            q[i] = (const uint8_t *)ls[i]->weight, scales[i] = ls[i]->scales, zeros[i] = ls[i]->zeros;
            bias[i] = ls[i]->bias, N[i] = ls[i]->N;
        }
        return tc_qgemv_i8_multi(x, M, first->K, count, q, N, scales, zeros, bias, y, first->group, first->bits,
                                 threads);
    }
    for (int i = 0; i < count; i++) {
        const tc_linear *l = ls[i];
        if (l->bits == 32) {
            tc_gemm_f32(x, M, l->K, (const float *)l->weight, l->N, l->bias, y[i], threads);
        } else if (tc_qgemm_f32(x, M, l->K, (const uint8_t *)l->weight, l->N, l->scales, l->zeros, l->group,
                                l->bits, l->bias, y[i], threads)) {
            return -1;
        }
    }
    return 0;
}

static int linear(const tc_linear *l, const float *x, int M, float *y, int int8_rows, int threads) {
    return linears(&l, 1, x, M, &y, int8_rows, threads);
}

static void add(float *h, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] += x[i];
}

static int layer_step(const tc_model *m, const tc_layer *L, float *h, int B, int position, const float *cos,
                      const float *sin, float *x, float *q, float *k, float *v, float *att, float *gate, float *up,
                      int threads) {
    const int D = m->head_dim, H = m->heads, KV = m->kv_heads, hidden = m->hidden;
    tc_rms_norm(h, B, hidden, L->input_norm, m->eps, x);
    const tc_linear *qkv[3] = {&L->q, &L->k, &L->v};
    float *qkv_out[3] = {q, k, v};
    if (linears(qkv, 3, x, B, qkv_out, m->int8_rows, threads)) return -1;
    if (L->q_norm) {
        tc_rms_norm(q, B * H, D, L->q_norm, m->eps, q);
        tc_rms_norm(k, B * KV, D, L->k_norm, m->eps, k);
    }
    for (int b = 0; b < B; b++) {  // one position: the same cos and sin for every sequence
        tc_rope(q + (size_t)b * H * D, 1, H, D, 0, cos, sin);
        tc_rope(k + (size_t)b * KV * D, 1, KV, D, 0, cos, sin);
        for (int j = 0; j < KV; j++) {
            const size_t slot = (((size_t)b * KV + j) * m->capacity + position) * D, from = ((size_t)b * KV + j) * D;
            memcpy(L->keys + slot, k + from, sizeof(float) * D);
            memcpy(L->values + slot, v + from, sizeof(float) * D);
        }
    }
    tc_attention_step(q, L->keys, L->values, B, H, KV, m->capacity, position + 1, D, m->scale, att, threads);
    if (linear(&L->o, att, B, x, m->int8_rows, threads)) return -1;
    add(h, x, (size_t)B * hidden);
    tc_rms_norm(h, B, hidden, L->post_norm, m->eps, x);
    const tc_linear *gate_up[2] = {&L->gate, &L->up};
    float *gate_up_out[2] = {gate, up};
    if (linears(gate_up, 2, x, B, gate_up_out, m->int8_rows, threads)) return -1;
    tc_silu_mul(gate, up, B * L->gate.N, gate);
    if (linear(&L->down, gate, B, x, m->int8_rows, threads)) return -1;
    add(h, x, (size_t)B * hidden);
    return 0;
}

// h [B, hidden]: the new tokens' embeddings in, the last hidden states out; the K/V of
// `position` are written into each layer's cache; logits [B, head.N]. cos, sin [head_dim]: the
// rotary table's row for `position`. Returns 0, or -1 (nothing usable) on a shape it cannot run.
int tc_decode_step(const tc_model *m, float *h, int B, int position, const float *cos, const float *sin,
                   float *logits, int threads) {
    const size_t qsize = (size_t)B * m->heads * m->head_dim, kvsize = (size_t)B * m->kv_heads * m->head_dim;
    const size_t wide = (size_t)B * m->intermediate;
    float *x = malloc(sizeof(float) * (size_t)B * m->hidden), *q = malloc(sizeof(float) * qsize);
    float *k = malloc(sizeof(float) * kvsize), *v = malloc(sizeof(float) * kvsize);
    float *att = malloc(sizeof(float) * qsize), *gate = malloc(sizeof(float) * wide);
    float *up = malloc(sizeof(float) * wide);
    int status = x && q && k && v && att && gate && up ? 0 : -1;
    for (int i = 0; i < m->layers && status == 0; i++)
        status = layer_step(m, &m->layer[i], h, B, position, cos, sin, x, q, k, v, att, gate, up, threads);
    if (status == 0) {
        tc_rms_norm(h, B, m->hidden, m->final_norm, m->eps, x);
        status = linear(&m->head, x, B, logits, m->int8_rows, threads);
    }
    free(x), free(q), free(k), free(v), free(att), free(gate), free(up);
    return status;
}
