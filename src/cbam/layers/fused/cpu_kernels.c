/* The six passes of primitives.py as C loops for the CPU, one build per element type.
 *
 * Compiled at first use by cpu_kernels.py with -DCBAM_F32, -DCBAM_F16 or -DCBAM_BF16. Maps are
 * (N, C, P) with element strides; every loop walks the map in its memory order (positions
 * inner for NCHW, channels inner for channels_last), and per-lane accumulators let the
 * compiler vectorise reductions without reassociating floating-point sums.
 * Absent branches are passed as neutral tensors (ones, zeros), never as NULL.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#if defined(CBAM_F32)
typedef float T;
static inline float LD(T v) { return v; }
static inline T ST(float v) { return v; }
#elif defined(CBAM_F16)
typedef _Float16 T;
static inline float LD(T v) { return (float)v; }
static inline T ST(float v) { return (T)v; }
#elif defined(CBAM_BF16)
typedef uint16_t T;
static inline float LD(T v) {
    uint32_t u = ((uint32_t)v) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline T ST(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (T)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                   /* round to nearest even */
    return (T)(u >> 16);
}
#else
#error "define CBAM_F32, CBAM_F16 or CBAM_BF16"
#endif

#define LANES 16
#define BLOCK 256 /* positions per task */
#define CBLOCK 256 /* most channels per task */
#define CHUNK 32   /* channels a channels-inner task keeps in registers: 4 vectors of VL */

typedef int64_t I;

/* Channels per task for the channels-inner loops: as many as fit (long contiguous runs), but
 * few enough that a small batch still gives every thread work. */
static I channel_block(I N, I C, int threads) {
    I block = C < CBLOCK ? C : CBLOCK;
    while (block > CHUNK && N * ((C + block - 1) / block) < 2 * threads) block /= 2;
    return block;
}
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
#define VL 8

static inline vf vload(const T *restrict p) {
    vf v;
    for (int j = 0; j < VL; j++) v[j] = LD(p[j]);
    return v;
}
static inline vf vloadf(const float *restrict p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline vi vbroadcast_i(int32_t v) {
    vi r;
    for (int j = 0; j < VL; j++) r[j] = v;
    return r;
}
static inline vf vbroadcast(float v) {
    vf r;
    for (int j = 0; j < VL; j++) r[j] = v;
    return r;
}
static inline vf vmax(vf a, vf b) {
    vi m = (vi)(a > b);
    return (vf)((m & (vi)a) | (~m & (vi)b));
}

/* The first i with w[i] * x[i] == value in a contiguous row (w may be NULL); len - 1 if none. */
static inline I first_equal(const T *restrict x, const float *restrict w, I len, float value) {
    vf target = vbroadcast(value);
    I i = 0;
    for (; i + VL <= len; i += VL) {
        vf a = vload(x + i);
        if (w) a *= vloadf(w + i);
        vi hit = (vi)(a == target);
        int any = 0;
        for (int j = 0; j < VL; j++) any |= hit[j];
        if (any) break;
    }
    for (; i < len - 1; i++)
        if (LD(x[i]) * (w ? w[i] : 1.f) == value) break;
    return i;
}

/* Sum and max of w * x over a contiguous row, and the sum of g * w * x; w and g may be NULL. */
static inline void row_reduce(const T *restrict x, const float *restrict w, const T *restrict g, I len, float *sum,
                              float *mx, float *dot) {
    vf s0 = {0}, s1 = {0}, d0 = {0}, d1 = {0}, m0 = vbroadcast(-INFINITY), m1 = m0;
    I i = 0;
    for (; i + 2 * VL <= len; i += 2 * VL) {
        vf a = vload(x + i), b = vload(x + i + VL);
        if (w) a *= vloadf(w + i), b *= vloadf(w + i + VL);
        s0 += a, s1 += b;
        m0 = vmax(a, m0), m1 = vmax(b, m1);
        if (g) d0 += vload(g + i) * a, d1 += vload(g + i + VL) * b;
    }
    float total = 0.f, best = -INFINITY, total_d = 0.f;
    for (int j = 0; j < VL; j++) {
        total += s0[j] + s1[j], total_d += d0[j] + d1[j];
        best = m0[j] > best ? m0[j] : best;
        best = m1[j] > best ? m1[j] : best;
    }
    for (; i < len; i++) {
        float v = LD(x[i]) * (w ? w[i] : 1.f);
        total += v, best = v > best ? v : best;
        if (g) total_d += LD(g[i]) * v;
    }
    *sum = total, *mx = best;
    if (dot) *dot = total_d;
}

/* Sum, max and first argmax down P rows (stride sp) of CHUNK contiguous channels, in registers. */
static inline void column_stats(const T *restrict base, I sp, I P, float *sum, float *mx, int32_t *id,
                                int with_index) {
    vf s[4], m[4];
    vi at[4];
    for (int k = 0; k < 4; k++) s[k] = vbroadcast(0.f), m[k] = vbroadcast(-INFINITY), at[k] = vbroadcast_i(0);
    if (with_index)
        for (I p = 0; p < P; p++) {
            vi pv = vbroadcast_i((int32_t)p);
            for (int k = 0; k < 4; k++) {
                vf v = vload(base + p * sp + k * VL);
                vi gt = (vi)(v > m[k]);
                s[k] += v, at[k] = (gt & pv) | (~gt & at[k]), m[k] = vmax(v, m[k]);
            }
        }
    else
        for (I p = 0; p < P; p++)
            for (int k = 0; k < 4; k++) {
                vf v = vload(base + p * sp + k * VL);
                s[k] += v, m[k] = vmax(v, m[k]);
            }
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < VL; j++) sum[k * VL + j] = s[k][j], mx[k * VL + j] = m[k][j], id[k * VL + j] = at[k][j];
}

/* channel_stats: mean, max and first argmax over P for every (n, c). */
void channel_stats(const T *x, I N, I C, I P, I sn, I sc, I sp, float *avg, float *mx, I *idx, int with_index,
                   int threads) {
    if (sc == 1 && sp != 1) {
        I cbs = channel_block(N, C, threads), nb = (C + cbs - 1) / cbs;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I b = 0; b < nb; b++) {
                I c0 = b * cbs, cb = C - c0 < cbs ? C - c0 : cbs;
                float s[CBLOCK], m[CBLOCK];
                int32_t id[CBLOCK];
                /* a small batch splits the channels finely: keep each chunk's sums in registers */
                I full = cbs < CBLOCK ? cb / CHUNK * CHUNK : 0;
                for (I j = 0; j < full; j += CHUNK)
                    column_stats(x + n * sn + c0 + j, sp, P, s + j, m + j, id + j, with_index);
                for (I j = full; j < cb; j++) s[j] = 0.f, m[j] = -INFINITY, id[j] = 0;
                if (full < cb)
                    for (I p = 0; p < P; p++) {
                        const T *restrict row = x + n * sn + p * sp + c0;
                        if (with_index)
                            for (I j = full; j < cb; j++) {
                                float v = LD(row[j]);
                                s[j] += v;
                                id[j] = v > m[j] ? (int32_t)p : id[j];
                                m[j] = v > m[j] ? v : m[j];
                            }
                        else
                            for (I j = full; j < cb; j++) {
                                float v = LD(row[j]);
                                s[j] += v;
                                m[j] = v > m[j] ? v : m[j];
                            }
                    }
                for (I j = 0; j < cb; j++) {
                    avg[n * C + c0 + j] = s[j] / (float)P;
                    mx[n * C + c0 + j] = m[j];
                    if (with_index) idx[n * C + c0 + j] = id[j];
                }
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I c = 0; c < C; c++) {
            const T *row = x + n * sn + c * sc;
            float total, best;
            if (sp == 1)
                row_reduce(row, 0, 0, P, &total, &best, 0);
            else {
                total = 0.f, best = -INFINITY;
                for (I p = 0; p < P; p++) {
                    float v = LD(row[p * sp]);
                    total += v, best = v > best ? v : best;
                }
            }
            avg[n * C + c] = total / (float)P;
            mx[n * C + c] = best;
            if (with_index) {
                I q = 0;
                if (sp == 1)
                    q = first_equal(row, 0, P, best);
                else
                    while (q < P - 1 && LD(row[q * sp]) != best) q++;
                idx[n * C + c] = q;
            }
        }
}

/* spatial_stats (g == NULL) and spatial_grad: mean, max, first argmax over C of y = x * mc for
 * every (n, p), and dms = sum over C of g * y. */
void spatial_stats(const T *x, const T *g, const float *mc, I N, I C, I P, I sn, I sc, I sp, I gn, I gc, I gp,
                   float *mean, float *mx, I *idx, float *dms, int with_index, int threads) {
    if (sp == 1 && sc != 1) {
        I nb = (P + BLOCK - 1) / BLOCK;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I b = 0; b < nb; b++) {
                I p0 = b * BLOCK, pb = P - p0 < BLOCK ? P - p0 : BLOCK;
                float s[BLOCK], m[BLOCK], d[BLOCK];
                int32_t id[BLOCK];
                for (I j = 0; j < pb; j++) s[j] = 0.f, m[j] = -INFINITY, d[j] = 0.f, id[j] = 0;
                for (I c = 0; c < C; c++) {
                    const T *restrict row = x + n * sn + c * sc + p0;
                    float w = mc[n * C + c];
                    if (with_index)
                        for (I j = 0; j < pb; j++) {
                            float y = LD(row[j]) * w;
                            s[j] += y;
                            id[j] = y > m[j] ? (int32_t)c : id[j];
                            m[j] = y > m[j] ? y : m[j];
                        }
                    else
                        for (I j = 0; j < pb; j++) {
                            float y = LD(row[j]) * w;
                            s[j] += y;
                            m[j] = y > m[j] ? y : m[j];
                        }
                    if (g) {
                        const T *grow = g + n * gn + c * gc + p0 * gp;
                        if (gp == 1)
                            for (I j = 0; j < pb; j++) d[j] += LD(grow[j]) * (LD(row[j]) * w);
                        else
                            for (I j = 0; j < pb; j++) d[j] += LD(grow[j * gp]) * (LD(row[j]) * w);
                    }
                }
                for (I j = 0; j < pb; j++) {
                    mean[n * P + p0 + j] = s[j] / (float)C;
                    mx[n * P + p0 + j] = m[j];
                    if (with_index) idx[n * P + p0 + j] = id[j];
                    if (g) dms[n * P + p0 + j] = d[j];
                }
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I p = 0; p < P; p++) {
            const T *restrict row = x + n * sn + p * sp;
            const T *restrict grow = g ? g + n * gn + p * gp : 0;
            const float *restrict w = mc + n * C;
            float total, best, total_d = 0.f;
            if (sc == 1 && (!grow || gc == 1))
                row_reduce(row, w, grow, C, &total, &best, &total_d);
            else {
                total = 0.f, best = -INFINITY;
                for (I c = 0; c < C; c++) {
                    float y = LD(row[c * sc]) * w[c];
                    total += y, best = y > best ? y : best;
                    if (grow) total_d += LD(grow[c * gc]) * y;
                }
            }
            mean[n * P + p] = total / (float)C;
            mx[n * P + p] = best;
            if (grow) dms[n * P + p] = total_d;
            if (with_index) {
                I q = 0;
                if (sc == 1)
                    q = first_equal(row, w, C, best);
                else
                    while (q < C - 1 && LD(row[q * sc]) * w[q] != best) q++;
                idx[n * P + p] = q;
            }
        }
}

/* gate_apply: out = x * mc * ms (+ r) (then ReLU); out and r (may be NULL) are laid out like x and may be
 * x itself (each element is read before it is written), so no restrict here. */
static inline float relu_f(float v) { return v > 0.f || v != v ? v : 0.f; } /* keeps NaN, as torch.relu does */
static inline float finish(float v, const T *r, I at, int relu) {
    if (r) v += LD(r[at]);
    return relu ? relu_f(v) : v;
}

void gate_apply(const T *x, const float *mc, const float *ms, const T *r, int relu, T *out, I N, I C, I P, I sn,
                I sc, I sp, int threads) {
    if (sc == 1 && sp != 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I p = 0; p < P; p++) {
                I base = n * sn + p * sp;
                const T *row = x + base;
                T *orow = out + base;
                const float *restrict w = mc + n * C;
                float s = ms[n * P + p];
                if (r) {
                    const T *rrow = r + base;
                    if (relu)
                        for (I c = 0; c < C; c++) orow[c] = ST(relu_f(LD(row[c]) * w[c] * s + LD(rrow[c])));
                    else
                        for (I c = 0; c < C; c++) orow[c] = ST(LD(row[c]) * w[c] * s + LD(rrow[c]));
                } else
                    for (I c = 0; c < C; c++) orow[c] = ST(finish(LD(row[c]) * w[c] * s, 0, 0, relu));
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I c = 0; c < C; c++) {
            I base = n * sn + c * sc;
            const T *row = x + base;
            T *orow = out + base;
            const float *restrict s = ms + n * P;
            float w = mc[n * C + c];
            if (sp == 1 && r) {
                const T *rrow = r + base;
                if (relu)
                    for (I p = 0; p < P; p++) orow[p] = ST(relu_f(LD(row[p]) * w * s[p] + LD(rrow[p])));
                else
                    for (I p = 0; p < P; p++) orow[p] = ST(LD(row[p]) * w * s[p] + LD(rrow[p]));
            } else if (sp == 1)
                for (I p = 0; p < P; p++) orow[p] = ST(finish(LD(row[p]) * w * s[p], 0, 0, relu));
            else
                for (I p = 0; p < P; p++) orow[p * sp] = ST(finish(LD(row[p * sp]) * w * s[p], r, base + p * sp, relu));
        }
}

/* The gradient of y = x * mc at (n, c, p): g * ms + dmean / C, plus dmax where c is the first max. */
static inline float grad_of_scaled(float gv, float msv, float dmean_c, float dmaxv, I sidxv, I c) {
    return gv * msv + dmean_c + (c == sidxv ? dmaxv : 0.f);
}

/* channel_grad: dmc = sum over P of dy * x. */
void channel_grad(const T *x, const T *g, const float *ms, const float *dmean, const float *dmax, const I *sidx,
                  float *dmc, I N, I C, I P, I sn, I sc, I sp, I gn, I gc, I gp, int threads) {
    const float inv_c = 1.f / (float)C;
    if (sc == 1 && sp != 1) {
        I cbs = channel_block(N, C, threads), nb = (C + cbs - 1) / cbs;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I b = 0; b < nb; b++) {
                I c0 = b * cbs, cb = C - c0 < cbs ? C - c0 : cbs;
                float acc[CBLOCK];
                for (I j = 0; j < cb; j++) acc[j] = 0.f;
                for (I p = 0; p < P; p++) {
                    const T *row = x + n * sn + p * sp + c0;
                    const T *grow = g + n * gn + p * gp + c0 * gc;
                    float a = ms[n * P + p], dm = dmean[n * P + p] * inv_c, dx = dmax[n * P + p];
                    I si = sidx[n * P + p];
                    if (gc == 1)
                        for (I j = 0; j < cb; j++) acc[j] += grad_of_scaled(LD(grow[j]), a, dm, dx, si, c0 + j) * LD(row[j]);
                    else
                        for (I j = 0; j < cb; j++)
                            acc[j] += grad_of_scaled(LD(grow[j * gc]), a, dm, dx, si, c0 + j) * LD(row[j]);
                }
                for (I j = 0; j < cb; j++) dmc[n * C + c0 + j] = acc[j];
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I c = 0; c < C; c++) {
            const T *row = x + n * sn + c * sc;
            const T *grow = g + n * gn + c * gc;
            const float *a = ms + n * P, *dm = dmean + n * P, *dx = dmax + n * P;
            const I *si = sidx + n * P;
            float acc[LANES];
            for (int j = 0; j < LANES; j++) acc[j] = 0.f;
            I p = 0;
            if (sp == 1 && gp == 1)
                for (; p + LANES <= P; p += LANES)
                    for (int j = 0; j < LANES; j++)
                        acc[j] += grad_of_scaled(LD(grow[p + j]), a[p + j], dm[p + j] * inv_c, dx[p + j], si[p + j], c) *
                                  LD(row[p + j]);
            for (; p < P; p++)
                acc[0] += grad_of_scaled(LD(grow[p * gp]), a[p], dm[p] * inv_c, dx[p], si[p], c) * LD(row[p * sp]);
            float total = 0.f;
            for (int j = 0; j < LANES; j++) total += acc[j];
            dmc[n * C + c] = total;
        }
}

/* input_grad: dx = dy * mc + davg / P + dcmax where p is the first max of channel c; dx laid out like g. */
void input_grad(const T *g, const float *mc, const float *ms, const float *dmean, const float *dmax, const I *sidx,
                const float *davg, const float *dcmax, const I *cidx, T *dxo, I N, I C, I P, I gn, I gc, I gp,
                int threads) {
    const float inv_c = 1.f / (float)C, inv_p = 1.f / (float)P;
    if (gc == 1 && gp != 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I p = 0; p < P; p++) {
                const T *grow = g + n * gn + p * gp;
                T *orow = dxo + n * gn + p * gp;
                const float *w = mc + n * C, *da = davg + n * C, *dc = dcmax + n * C;
                const I *ci = cidx + n * C;
                float a = ms[n * P + p], dm = dmean[n * P + p] * inv_c, dx = dmax[n * P + p];
                I si = sidx[n * P + p];
                for (I c = 0; c < C; c++)
                    orow[c] = ST(grad_of_scaled(LD(grow[c]), a, dm, dx, si, c) * w[c] + da[c] * inv_p +
                                 (ci[c] == p ? dc[c] : 0.f));
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I c = 0; c < C; c++) {
            const T *grow = g + n * gn + c * gc;
            T *orow = dxo + n * gn + c * gc;
            const float *a = ms + n * P, *dm = dmean + n * P, *dx = dmax + n * P;
            const I *si = sidx + n * P;
            float w = mc[n * C + c], da = davg[n * C + c] * inv_p, dc = dcmax[n * C + c];
            I ci = cidx[n * C + c];
            for (I p = 0; p < P; p++)
                orow[p * gp] = ST(grad_of_scaled(LD(grow[p * gp]), a[p], dm[p] * inv_c, dx[p], si[p], c) * w + da +
                                  (p == ci ? dc : 0.f));
        }
}

/* The spatial gate's k x k "same" convolution, float32 whatever the map's type: s (N, Ci, H, W) ->
 * z (N, 1, H, W), and its gradients. Direct loops: the kernel has 2 x 7 x 7 taps and one output. */
void conv_forward(const float *s, const float *w, float bias, float scale, float shift, int gate, float *z, I N, I Ci,
                  I H, I W, I K, int threads) {
    I r = K / 2;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I h = 0; h < H; h++) {
            float *restrict zr = z + (n * H + h) * W;
            for (I x = 0; x < W; x++) zr[x] = bias;
            for (I c = 0; c < Ci; c++)
                for (I i = 0; i < K; i++) {
                    I hh = h + i - r;
                    if (hh < 0 || hh >= H) continue;
                    const float *restrict sr = s + ((n * Ci + c) * H + hh) * W;
                    for (I j = 0; j < K; j++) {
                        float wt = w[(c * K + i) * K + j];
                        I off = j - r, lo = off < 0 ? -off : 0, hi = off > 0 ? W - off : W;
                        for (I x = lo; x < hi; x++) zr[x] += wt * sr[x + off];
                    }
                }
            if (gate) /* a BatchNorm in eval mode is an affine map; then the sigmoid: Ms itself */
                for (I x = 0; x < W; x++) zr[x] = 1.f / (1.f + expf(-(zr[x] * scale + shift)));
        }
}

void conv_backward(const float *s, const float *w, const float *dz, float *ds, float *dw, float *db, I N, I Ci, I H,
                   I W, I K, int threads) {
    I r = K / 2;
#pragma omp parallel for collapse(3) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I c = 0; c < Ci; c++)
            for (I h = 0; h < H; h++) {
                float *restrict dr = ds + ((n * Ci + c) * H + h) * W;
                for (I x = 0; x < W; x++) dr[x] = 0.f;
                for (I i = 0; i < K; i++) {
                    I ho = h - i + r;
                    if (ho < 0 || ho >= H) continue;
                    const float *restrict gr = dz + (n * H + ho) * W;
                    for (I j = 0; j < K; j++) {
                        float wt = w[(c * K + i) * K + j];
                        I off = j - r, lo = off > 0 ? off : 0, hi = off < 0 ? W + off : W;
                        for (I x = lo; x < hi; x++) dr[x] += wt * gr[x - off];
                    }
                }
            }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (I t = 0; t < Ci * K * K; t++) {
        I c = t / (K * K), i = (t / K) % K, j = t % K, off = j - r;
        I lo = off < 0 ? -off : 0, hi = off > 0 ? W - off : W;
        float acc = 0.f;
        for (I n = 0; n < N; n++)
            for (I h = 0; h < H; h++) {
                I hh = h + i - r;
                if (hh < 0 || hh >= H) continue;
                const float *restrict sr = s + ((n * Ci + c) * H + hh) * W;
                const float *restrict gr = dz + (n * H + h) * W;
                float part[VL] = {0};
                I x = lo;
                for (; x + VL <= hi; x += VL)
                    for (int l = 0; l < VL; l++) part[l] += sr[x + l + off] * gr[x + l];
                for (; x < hi; x++) part[0] += sr[x + off] * gr[x];
                for (int l = 0; l < VL; l++) acc += part[l];
            }
        dw[t] = acc;
    }
    float total = 0.f;
    for (I t = 0; t < N * H * W; t++) total += dz[t];
    *db = total;
}

/* SimAM (primitives.simam_*): per channel the mean and inv = 1 / (4 (v + lambda)), then the weighting
 * s = sigmoid(inv d^2 + 1/2), d = x - mean; backward, A = sum h d and B = sum h d^2 (h = g x s (1 - s)),
 * then dx. Rows run along P (NCHW, or P == 1) or along C (channels_last); every element of a row goes
 * through the same vector code, its tail lanes padded, so a result does not depend on its position. */

#define EXP_FLOOR -87.f /* exp below it is under float's smallest normal: the weight is 1 either way */

static inline vf vselect(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* exp(t) lane by lane for t <= 0, NaN kept: t = n ln2 + r, Cephes' degree-6 polynomial in r, times 2^n. */
static inline vf vexp_nonpositive(vf t) {
    t = vselect((vi)(t < EXP_FLOOR), vbroadcast(EXP_FLOOR), t);
    vf fx = t * 1.44269504088896341f + 0.5f;
    vi n = __builtin_convertvector(fx, vi);
    n += (vi)(__builtin_convertvector(n, vf) > fx); /* truncation rounded a negative up: floor is one less */
    vf fn = __builtin_convertvector(n, vf);
    vf r = t - fn * 0.693359375f - fn * -2.12194440e-4f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.f;
    return p * (vf)((n + 127) << 23);
}

static inline vf simam_weight(vf d, vf inv) { return 1.f / (1.f + vexp_nonpositive(-(inv * d * d + 0.5f))); }

static inline vf vload_part(const T *restrict p, I len) {
    if (len == VL) return vload(p);
    vf v = vbroadcast(0.f);
    for (I j = 0; j < len; j++) v[j] = LD(p[j]);
    return v;
}
static inline vf vloadf_part(const float *restrict p, I len) {
    if (len == VL) return vloadf(p);
    vf v = vbroadcast(0.f);
    for (I j = 0; j < len; j++) v[j] = p[j];
    return v;
}
static inline void vstore_part(T *restrict p, vf v, I len) {
    if (len == VL)
        for (int j = 0; j < VL; j++) p[j] = ST(v[j]);
    else
        for (I j = 0; j < len; j++) p[j] = ST(v[j]);
}
static inline void vstoref_part(float *restrict p, vf v, I len) {
    if (len == VL) {
        memcpy(p, &v, sizeof v);
        return;
    }
    for (I j = 0; j < len; j++) p[j] = v[j];
}
static inline float vsum(vf v) {
    float total = 0.f;
    for (int j = 0; j < VL; j++) total += v[j];
    return total;
}

static inline float simam_inv(float squares, I P, float e_lambda) {
    return 1.f / (4.f * (squares / (float)(P > 1 ? P - 1 : 1) + e_lambda));
}

/* Channels per task for a channels-inner SimAM pass that sweeps its block twice: small enough to stay in cache. */
static I simam_channel_block(I N, I C, I P, int threads) {
    I block = channel_block(N, C, threads);
    while (block > CHUNK && block * P * (I)sizeof(T) > (1 << 18)) block /= 2;
    return block;
}

/* simam_stats: mean over P, then the squared deviations about it, for every (n, c). */
void simam_stats(const T *x, I N, I C, I P, I sn, I sc, I sp, float e_lambda, float *mean, float *inv, int threads) {
    if (sp == 1 || P == 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I c = 0; c < C; c++) {
                const T *restrict row = x + n * sn + c * sc;
                vf s0 = vbroadcast(0.f), s1 = s0;
                I p = 0;
                for (; p + 2 * VL <= P; p += 2 * VL) s0 += vload(row + p), s1 += vload(row + p + VL);
                float total = vsum(s0) + vsum(s1);
                for (; p < P; p++) total += LD(row[p]);
                float m = total / (float)P;
                vf q0 = vbroadcast(0.f), q1 = q0;
                for (p = 0; p + 2 * VL <= P; p += 2 * VL) {
                    vf d0 = vload(row + p) - m, d1 = vload(row + p + VL) - m;
                    q0 += d0 * d0, q1 += d1 * d1;
                }
                float squares = vsum(q0) + vsum(q1);
                for (; p < P; p++) {
                    float d = LD(row[p]) - m;
                    squares += d * d;
                }
                mean[n * C + c] = m;
                inv[n * C + c] = simam_inv(squares, P, e_lambda);
            }
        return;
    }
    I cbs = simam_channel_block(N, C, P, threads), nb = (C + cbs - 1) / cbs;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I b = 0; b < nb; b++) {
            I c0 = b * cbs, cb = C - c0 < cbs ? C - c0 : cbs;
            float s[CBLOCK], q[CBLOCK];
            for (I j = 0; j < cb; j++) s[j] = 0.f, q[j] = 0.f;
            for (I p = 0; p < P; p++) {
                const T *restrict row = x + n * sn + p * sp + c0;
                for (I j = 0; j < cb; j++) s[j] += LD(row[j]);
            }
            for (I j = 0; j < cb; j++) s[j] /= (float)P;
            for (I p = 0; p < P; p++) {
                const T *restrict row = x + n * sn + p * sp + c0;
                for (I j = 0; j < cb; j++) {
                    float d = LD(row[j]) - s[j];
                    q[j] += d * d;
                }
            }
            for (I j = 0; j < cb; j++) {
                mean[n * C + c0 + j] = s[j];
                inv[n * C + c0 + j] = simam_inv(q[j], P, e_lambda);
            }
        }
}

/* simam_apply: out = x * s; out is laid out like x. */
void simam_apply(const T *x, const float *mean, const float *inv, T *out, I N, I C, I P, I sn, I sc, I sp,
                 int threads) {
    if (sp == 1 || P == 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I c = 0; c < C; c++) {
                const T *restrict row = x + n * sn + c * sc;
                T *restrict orow = out + n * sn + c * sc;
                vf m = vbroadcast(mean[n * C + c]), k = vbroadcast(inv[n * C + c]);
                for (I p = 0; p < P; p += VL) {
                    I len = P - p < VL ? P - p : VL;
                    vf v = vload_part(row + p, len);
                    vstore_part(orow + p, v * simam_weight(v - m, k), len);
                }
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I p = 0; p < P; p++) {
            const T *restrict row = x + n * sn + p * sp;
            T *restrict orow = out + n * sn + p * sp;
            const float *m = mean + n * C, *k = inv + n * C;
            for (I c = 0; c < C; c += VL) {
                I len = C - c < VL ? C - c : VL;
                vf v = vload_part(row + c, len);
                vstore_part(orow + c, v * simam_weight(v - vloadf_part(m + c, len), vloadf_part(k + c, len)), len);
            }
        }
}

/* h d and h d^2 of one vector of elements (zero where g is). */
static inline void simam_moments(vf v, vf gv, vf m, vf k, vf *hd, vf *hd2) {
    vf d = v - m, s = simam_weight(d, k), h = gv * v * s * (1.f - s);
    *hd = h * d, *hd2 = h * d * d;
}

/* simam_grad_stats: A = sum over P of h d, B = sum of h d^2; g is laid out like x. */
void simam_grad_stats(const T *x, const T *g, const float *mean, const float *inv, float *a, float *b, I N, I C, I P,
                      I sn, I sc, I sp, int threads) {
    if (sp == 1 || P == 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I c = 0; c < C; c++) {
                const T *restrict row = x + n * sn + c * sc, *restrict grow = g + n * sn + c * sc;
                vf m = vbroadcast(mean[n * C + c]), k = vbroadcast(inv[n * C + c]);
                vf sa = vbroadcast(0.f), sb = sa;
                for (I p = 0; p < P; p += VL) {
                    I len = P - p < VL ? P - p : VL;
                    vf hd, hd2;
                    simam_moments(vload_part(row + p, len), vload_part(grow + p, len), m, k, &hd, &hd2);
                    sa += hd, sb += hd2;
                }
                a[n * C + c] = vsum(sa), b[n * C + c] = vsum(sb);
            }
        return;
    }
    I cbs = channel_block(N, C, threads), nb = (C + cbs - 1) / cbs;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I bk = 0; bk < nb; bk++) {
            I c0 = bk * cbs, cb = C - c0 < cbs ? C - c0 : cbs;
            float sa[CBLOCK + VL], sb[CBLOCK + VL];
            for (I j = 0; j < cb + VL; j++) sa[j] = 0.f, sb[j] = 0.f;
            const float *m = mean + n * C + c0, *k = inv + n * C + c0;
            for (I p = 0; p < P; p++) {
                const T *restrict row = x + n * sn + p * sp + c0, *restrict grow = g + n * sn + p * sp + c0;
                for (I j = 0; j < cb; j += VL) {
                    I len = cb - j < VL ? cb - j : VL;
                    vf hd, hd2;
                    simam_moments(vload_part(row + j, len), vload_part(grow + j, len), vloadf_part(m + j, len),
                                  vloadf_part(k + j, len), &hd, &hd2);
                    vstoref_part(sa + j, vloadf_part(sa + j, len) + hd, len);
                    vstoref_part(sb + j, vloadf_part(sb + j, len) + hd2, len);
                }
            }
            for (I j = 0; j < cb; j++) a[n * C + c0 + j] = sa[j], b[n * C + c0 + j] = sb[j];
        }
}

/* One vector of dx = g s + 2 inv (h d - A / P) - d (8 inv^2 B / max(P - 1, 1)), the brackets per channel. */
static inline vf simam_dx(vf v, vf gv, vf m, vf k, vf a_mean, vf b_term) {
    vf d = v - m, s = simam_weight(d, k), h = gv * v * s * (1.f - s);
    return gv * s + 2.f * k * (h * d - a_mean) - d * b_term;
}

/* simam_input_grad: dx laid out like x (and g). */
void simam_input_grad(const T *x, const T *g, const float *mean, const float *inv, const float *a, const float *b,
                      T *dx, I N, I C, I P, I sn, I sc, I sp, int threads) {
    const float inv_p = 1.f / (float)P, inv_n = 1.f / (float)(P > 1 ? P - 1 : 1);
    if (sp == 1 || P == 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I c = 0; c < C; c++) {
                I base = n * sn + c * sc, at = n * C + c;
                float kv = inv[at];
                vf m = vbroadcast(mean[at]), k = vbroadcast(kv), am = vbroadcast(a[at] * inv_p),
                   bt = vbroadcast(8.f * kv * kv * b[at] * inv_n);
                for (I p = 0; p < P; p += VL) {
                    I len = P - p < VL ? P - p : VL;
                    vf r = simam_dx(vload_part(x + base + p, len), vload_part(g + base + p, len), m, k, am, bt);
                    vstore_part(dx + base + p, r, len);
                }
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I p = 0; p < P; p++) {
            I base = n * sn + p * sp;
            const float *m = mean + n * C, *k = inv + n * C, *av = a + n * C, *bv = b + n * C;
            for (I c = 0; c < C; c += VL) {
                I len = C - c < VL ? C - c : VL;
                vf kk = vloadf_part(k + c, len);
                vf r = simam_dx(vload_part(x + base + c, len), vload_part(g + base + c, len), vloadf_part(m + c, len),
                                kk, vloadf_part(av + c, len) * inv_p,
                                8.f * kk * kk * vloadf_part(bv + c, len) * inv_n);
                vstore_part(dx + base + c, r, len);
            }
        }
}

/* Triplet Attention's passes over the map (N, C, H, W), dense NCHW or channels_last (cl = 1): every
 * Z-pool in one read (max, its tie count and mean over C, over H and over W), the weighting
 * out = x (a + b + s) / k by the three gates, and the gradients of both. Sums are kept in double,
 * so a mean and a gate's gradient round once. Work is split by sample: the pools over C and the
 * gradient of s gather across channels. A max's gradient is split among its ties, as torch.amax's is. */

/* Branch-free, so the loops over a row vectorise: a larger value (or a first NaN, which then stays) restarts
 * the count, an equal one adds to it. */
static inline void max_count(float v, float *m, float *cnt) {
    float mv = *m, kv = *cnt;
    int greater = v > mv || (v != v && mv == mv), equal = v == mv;
    *m = greater ? v : mv;
    *cnt = greater ? 1.f : (equal ? kv + 1.f : kv);
}

/* The max, its count and the sum of one contiguous run, VL lanes at a time, then the lanes merged. */
static inline void run_max_count(const T *restrict run, I len, float *m, float *cnt, double *sum) {
    vf mv = vbroadcast(-INFINITY), kv = vbroadcast(0.f), sv = vbroadcast(0.f), one = vbroadcast(1.f);
    I p = 0;
    for (; p + VL <= len; p += VL) {
        vf v = vload(run + p);
        vi greater = (vi)(v > mv) | ((vi)(v != v) & (vi)(mv == mv)), equal = (vi)(v == mv);
        mv = vselect(greater, v, mv);
        kv = vselect(greater, one, vselect(equal, kv + one, kv));
        sv += v;
    }
    float mm = -INFINITY, kk = 0.f;
    double ss = 0.0;
    for (int l = 0; l < VL; l++) {
        int greater = mv[l] > mm || (mv[l] != mv[l] && mm == mm);
        kk = greater ? kv[l] : (mv[l] == mm ? kk + kv[l] : kk);
        mm = greater ? mv[l] : mm;
        ss += sv[l];
    }
    for (; p < len; p++) {
        float v = LD(run[p]);
        max_count(v, &mm, &kk), ss += v;
    }
    *m = mm, *cnt = kk, *sum = ss;
}

static void *scratch(size_t bytes) { return malloc(bytes > 0 ? bytes : 1); }

/* pc (N, 2, H, W), ph (N, 2, C, W), pw (N, 2, C, H): [max; mean] over C, over H and over W, and the
 * number of elements equal to each max, cc (N, H, W), ch (N, C, W), cw (N, C, H). */
void triplet_pool(const T *x, I N, I C, I H, I W, int cl, T *pc, T *ph, T *pw, float *cc, float *ch, float *cw,
                  int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++) {
        const T *xn = x + n * C * H * W;
        T *pcn = pc + n * 2 * H * W, *phn = ph + n * 2 * C * W, *pwn = pw + n * 2 * C * H;
        float *ccn = cc + n * H * W, *chn = ch + n * C * W, *cwn = cw + n * C * H;
        I big = H * W > C * W ? H * W : C * W;
        float *m1 = scratch(big * sizeof(float)), *k1 = scratch(big * sizeof(float));
        double *s1 = scratch(big * sizeof(double));
        float *m2 = scratch((C > W ? C : W) * sizeof(float)), *k2 = scratch((C > W ? C : W) * sizeof(float));
        double *s2 = scratch((C > W ? C : W) * sizeof(double));
        if (!cl) { /* rows along W; m1 pools over C at (h, w), m2 over H at w for the current channel */
            for (I p = 0; p < H * W; p++) m1[p] = -INFINITY, k1[p] = 0.f, s1[p] = 0.0;
            for (I c = 0; c < C; c++) {
                for (I w = 0; w < W; w++) m2[w] = -INFINITY, k2[w] = 0.f, s2[w] = 0.0;
                for (I h = 0; h < H; h++) {
                    const T *restrict row = xn + (c * H + h) * W;
                    float *restrict mh = m2, *restrict kh = k2, *restrict mc = m1 + h * W, *restrict kc = k1 + h * W;
                    double *restrict sh = s2, *restrict sc = s1 + h * W;
                    for (I w = 0; w < W; w++) {
                        float v = LD(row[w]);
                        max_count(v, &mh[w], &kh[w]), sh[w] += v;
                        max_count(v, &mc[w], &kc[w]), sc[w] += v;
                    }
                    float mw, kw;
                    double sw;
                    run_max_count(row, W, &mw, &kw, &sw);
                    pwn[c * H + h] = ST(mw), pwn[(C + c) * H + h] = ST((float)(sw / (double)W)), cwn[c * H + h] = kw;
                }
                for (I w = 0; w < W; w++)
                    phn[c * W + w] = ST(m2[w]), phn[(C + c) * W + w] = ST((float)(s2[w] / (double)H)),
                    chn[c * W + w] = k2[w];
            }
            for (I p = 0; p < H * W; p++)
                pcn[p] = ST(m1[p]), pcn[H * W + p] = ST((float)(s1[p] / (double)C)), ccn[p] = k1[p];
        } else { /* rows along C; m1 pools over H at (w, c), m2 over W at c for the current h */
            for (I p = 0; p < W * C; p++) m1[p] = -INFINITY, k1[p] = 0.f, s1[p] = 0.0;
            for (I h = 0; h < H; h++) {
                for (I c = 0; c < C; c++) m2[c] = -INFINITY, k2[c] = 0.f, s2[c] = 0.0;
                for (I w = 0; w < W; w++) {
                    const T *restrict row = xn + (h * W + w) * C;
                    float *restrict mw = m2, *restrict kw = k2, *restrict mh = m1 + w * C, *restrict kh = k1 + w * C;
                    double *restrict sw = s2, *restrict sh = s1 + w * C;
                    for (I c = 0; c < C; c++) {
                        float v = LD(row[c]);
                        max_count(v, &mw[c], &kw[c]), sw[c] += v;
                        max_count(v, &mh[c], &kh[c]), sh[c] += v;
                    }
                    float mc, kc;
                    double sc;
                    run_max_count(row, C, &mc, &kc, &sc);
                    I p = h * W + w;
                    pcn[p] = ST(mc), pcn[H * W + p] = ST((float)(sc / (double)C)), ccn[p] = kc;
                }
                for (I c = 0; c < C; c++)
                    pwn[c * H + h] = ST(m2[c]), pwn[(C + c) * H + h] = ST((float)(s2[c] / (double)W)),
                    cwn[c * H + h] = k2[c];
            }
            for (I w = 0; w < W; w++)
                for (I c = 0; c < C; c++)
                    phn[c * W + w] = ST(m1[w * C + c]), phn[(C + c) * W + w] = ST((float)(s1[w * C + c] / (double)H)),
                    chn[c * W + w] = k1[w * C + c];
        }
        free(m1), free(k1), free(s1), free(m2), free(k2), free(s2);
    }
}

/* The gradient of x through the pools: for each of the three, dmax / count where x equals its max, plus
 * dmean / length. Each plane comes as (max, dmax / count, dmean / length), float32, laid out as the loops
 * read it: NCHW (H, W), (C, W), (C, H); channels_last (H, W), (W, C), (H, C). */
void triplet_pool_backward(const T *x, const float *mc, const float *wc, const float *ec, const float *mh,
                           const float *wh, const float *eh, const float *mw, const float *ww, const float *ew, T *dx,
                           I N, I C, I H, I W, int cl, int threads) {
    if (!cl) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I c = 0; c < C; c++)
                for (I h = 0; h < H; h++) {
                    I at = ((n * C + c) * H + h) * W, pw = (n * C + c) * H + h;
                    const float *restrict mcr = mc + (n * H + h) * W, *restrict wcr = wc + (n * H + h) * W,
                                          *restrict ecr = ec + (n * H + h) * W, *restrict mhr = mh + (n * C + c) * W,
                                          *restrict whr = wh + (n * C + c) * W, *restrict ehr = eh + (n * C + c) * W;
                    const T *restrict xr = x + at;
                    T *restrict dr = dx + at;
                    float mwv = mw[pw], wwv = ww[pw], ewv = ew[pw];
                    for (I w = 0; w < W; w++) {
                        float v = LD(xr[w]);
                        float d = (v == mcr[w] ? wcr[w] : 0.f) + ecr[w];
                        d += (v == mhr[w] ? whr[w] : 0.f) + ehr[w];
                        d += (v == mwv ? wwv : 0.f) + ewv;
                        dr[w] = ST(d);
                    }
                }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I h = 0; h < H; h++)
            for (I w = 0; w < W; w++) {
                I at = ((n * H + h) * W + w) * C, pc = (n * H + h) * W + w;
                const float *restrict mhr = mh + (n * W + w) * C, *restrict whr = wh + (n * W + w) * C,
                                      *restrict ehr = eh + (n * W + w) * C, *restrict mwr = mw + (n * H + h) * C,
                                      *restrict wwr = ww + (n * H + h) * C, *restrict ewr = ew + (n * H + h) * C;
                const T *restrict xr = x + at;
                T *restrict dr = dx + at;
                float mcv = mc[pc], wcv = wc[pc], ecv = ec[pc];
                for (I c = 0; c < C; c++) {
                    float v = LD(xr[c]);
                    float d = (v == mcv ? wcv : 0.f) + ecv;
                    d += (v == mhr[c] ? whr[c] : 0.f) + ehr[c];
                    d += (v == mwr[c] ? wwr[c] : 0.f) + ewr[c];
                    dr[c] = ST(d);
                }
            }
}

/* out = x ((a + b) + s) / k with a (N, C, W), b (N, C, H), s (N, H, W) for NCHW; channels_last reads a as
 * (N, W, C) and b as (N, H, C). k is the number of branches (s is zeros without the spatial one). */
void triplet_apply(const T *x, const float *a, const float *b, const float *s, float k, T *out, I N, I C, I H, I W,
                   int cl, int threads) {
    if (!cl) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I c = 0; c < C; c++)
                for (I h = 0; h < H; h++) {
                    I at = ((n * C + c) * H + h) * W;
                    const float *restrict ar = a + (n * C + c) * W, *restrict sr = s + (n * H + h) * W;
                    const T *restrict xr = x + at;
                    T *restrict orow = out + at;
                    float bv = b[(n * C + c) * H + h];
                    for (I w = 0; w < W; w++) orow[w] = ST(LD(xr[w]) * (((ar[w] + bv) + sr[w]) / k));
                }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I h = 0; h < H; h++)
            for (I w = 0; w < W; w++) {
                I at = ((n * H + h) * W + w) * C;
                const float *restrict ar = a + (n * W + w) * C, *restrict br = b + (n * H + h) * C;
                const T *restrict xr = x + at;
                T *restrict orow = out + at;
                float sv = s[(n * H + h) * W + w];
                for (I c = 0; c < C; c++) orow[c] = ST(LD(xr[c]) * (((ar[c] + br[c]) + sv) / k));
            }
}

/* dx = g ((a + b) + s) / k, and the gates' gradients, the sums of g x / k over H (da, (N, C, W)), over W
 * (db, (N, C, H)) and over C (ds, (N, H, W)); a and b are read as in triplet_apply, g is laid out like x. */
void triplet_apply_backward(const T *x, const T *g, const float *a, const float *b, const float *s, float k, T *dx,
                            float *da, float *db, float *ds, I N, I C, I H, I W, int cl, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++) {
        if (!cl) {
            double *sacc = scratch(H * W * sizeof(double)), *aacc = scratch(W * sizeof(double));
            for (I p = 0; p < H * W; p++) sacc[p] = 0.0;
            for (I c = 0; c < C; c++) {
                for (I w = 0; w < W; w++) aacc[w] = 0.0;
                for (I h = 0; h < H; h++) {
                    I at = ((n * C + c) * H + h) * W;
                    const float *restrict ar = a + (n * C + c) * W, *restrict sr = s + (n * H + h) * W;
                    const T *restrict xr = x + at, *restrict gr = g + at;
                    T *restrict dr = dx + at;
                    double *restrict aa = aacc, *restrict sa = sacc + h * W;
                    float bv = b[(n * C + c) * H + h];
                    double bacc = 0.0;
                    for (I w = 0; w < W; w++) {
                        float gv = LD(gr[w]), gx = gv * LD(xr[w]);
                        dr[w] = ST(gv * (((ar[w] + bv) + sr[w]) / k));
                        aa[w] += gx, bacc += gx, sa[w] += gx;
                    }
                    db[(n * C + c) * H + h] = (float)(bacc / k);
                }
                for (I w = 0; w < W; w++) da[(n * C + c) * W + w] = (float)(aacc[w] / k);
            }
            for (I p = 0; p < H * W; p++) ds[n * H * W + p] = (float)(sacc[p] / k);
            free(sacc), free(aacc);
        } else {
            double *aacc = scratch(W * C * sizeof(double)), *bacc = scratch(C * sizeof(double));
            for (I p = 0; p < W * C; p++) aacc[p] = 0.0;
            for (I h = 0; h < H; h++) {
                for (I c = 0; c < C; c++) bacc[c] = 0.0;
                for (I w = 0; w < W; w++) {
                    I at = ((n * H + h) * W + w) * C;
                    const float *restrict ar = a + (n * W + w) * C, *restrict br = b + (n * H + h) * C;
                    const T *restrict xr = x + at, *restrict gr = g + at;
                    T *restrict dr = dx + at;
                    double *restrict aa = aacc + w * C, *restrict ba = bacc;
                    float sv = s[(n * H + h) * W + w];
                    double sacc = 0.0;
                    for (I c = 0; c < C; c++) {
                        float gv = LD(gr[c]), gx = gv * LD(xr[c]);
                        dr[c] = ST(gv * (((ar[c] + br[c]) + sv) / k));
                        aa[c] += gx, ba[c] += gx, sacc += gx;
                    }
                    ds[(n * H + h) * W + w] = (float)(sacc / k);
                }
                for (I c = 0; c < C; c++) db[(n * C + c) * H + h] = (float)(bacc[c] / k);
            }
            for (I w = 0; w < W; w++)
                for (I c = 0; c < C; c++) da[(n * C + c) * W + w] = (float)(aacc[w * C + c] / k);
            free(aacc), free(bacc);
        }
    }
}
