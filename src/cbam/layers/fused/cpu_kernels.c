/* The six passes of primitives.py as C loops for the CPU, one build per element type.
 *
 * Compiled at first use by cpu_kernels.py with -DCBAM_F32, -DCBAM_F16 or -DCBAM_BF16. Maps are
 * (N, C, P) with element strides; every loop walks the map in its memory order (positions
 * inner for NCHW, channels inner for channels_last), and per-lane accumulators let the
 * compiler vectorise reductions without reassociating floating-point sums.
 * Absent branches are passed as neutral tensors (ones, zeros), never as NULL.
 */
#include <math.h>
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
#define BLOCK 256

typedef int64_t I;

/* channel_stats: mean, max and first argmax over P for every (n, c). */
void channel_stats(const T *x, I N, I C, I P, I sn, I sc, I sp, float *avg, float *mx, I *idx, int with_index,
                   int threads) {
    if (sc == 1 && sp != 1) {
        I nb = (C + BLOCK - 1) / BLOCK;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I b = 0; b < nb; b++) {
                I c0 = b * BLOCK, cb = C - c0 < BLOCK ? C - c0 : BLOCK;
                float s[BLOCK], m[BLOCK];
                I id[BLOCK];
                for (I j = 0; j < cb; j++) s[j] = 0.f, m[j] = -INFINITY, id[j] = 0;
                for (I p = 0; p < P; p++) {
                    const T *row = x + n * sn + p * sp + c0;
                    for (I j = 0; j < cb; j++) {
                        float v = LD(row[j]);
                        s[j] += v;
                        if (v > m[j]) m[j] = v, id[j] = p;
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
            float s[LANES], m[LANES];
            for (int j = 0; j < LANES; j++) s[j] = 0.f, m[j] = -INFINITY;
            I p = 0;
            if (sp == 1)
                for (; p + LANES <= P; p += LANES)
                    for (int j = 0; j < LANES; j++) {
                        float v = LD(row[p + j]);
                        s[j] += v;
                        m[j] = v > m[j] ? v : m[j];
                    }
            for (; p < P; p++) {
                float v = LD(row[p * sp]);
                s[0] += v;
                m[0] = v > m[0] ? v : m[0];
            }
            float total = 0.f, best = -INFINITY;
            for (int j = 0; j < LANES; j++) total += s[j], best = m[j] > best ? m[j] : best;
            avg[n * C + c] = total / (float)P;
            mx[n * C + c] = best;
            if (with_index) {
                I q = 0;
                if (sp == 1)
                    for (; q + LANES <= P; q += LANES) {
                        int hit = 0;
                        for (int j = 0; j < LANES; j++) hit |= LD(row[q + j]) == best;
                        if (hit) break;
                    }
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
                I id[BLOCK];
                for (I j = 0; j < pb; j++) s[j] = 0.f, m[j] = -INFINITY, d[j] = 0.f, id[j] = 0;
                for (I c = 0; c < C; c++) {
                    const T *row = x + n * sn + c * sc + p0;
                    float w = mc[n * C + c];
                    for (I j = 0; j < pb; j++) {
                        float y = LD(row[j]) * w;
                        s[j] += y;
                        if (y > m[j]) m[j] = y, id[j] = c;
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
            float s[LANES], m[LANES], d[LANES];
            for (int j = 0; j < LANES; j++) s[j] = 0.f, m[j] = -INFINITY, d[j] = 0.f;
            I c = 0;
            if (sc == 1 && grow && gc == 1)
                for (; c + LANES <= C; c += LANES)
                    for (int j = 0; j < LANES; j++) {
                        float y = LD(row[c + j]) * w[c + j];
                        s[j] += y;
                        m[j] = y > m[j] ? y : m[j];
                        d[j] += LD(grow[c + j]) * y;
                    }
            else if (sc == 1 && !grow)
                for (; c + LANES <= C; c += LANES)
                    for (int j = 0; j < LANES; j++) {
                        float y = LD(row[c + j]) * w[c + j];
                        s[j] += y;
                        m[j] = y > m[j] ? y : m[j];
                    }
            for (; c < C; c++) {
                float y = LD(row[c * sc]) * w[c];
                s[0] += y;
                m[0] = y > m[0] ? y : m[0];
                if (grow) d[0] += LD(grow[c * gc]) * y;
            }
            float total = 0.f, best = -INFINITY, total_d = 0.f;
            for (int j = 0; j < LANES; j++) total += s[j], best = m[j] > best ? m[j] : best, total_d += d[j];
            mean[n * P + p] = total / (float)C;
            mx[n * P + p] = best;
            if (grow) dms[n * P + p] = total_d;
            if (with_index) {
                I q = 0;
                if (sc == 1)
                    for (; q + LANES <= C; q += LANES) {
                        int hit = 0;
                        for (int j = 0; j < LANES; j++) hit |= LD(row[q + j]) * w[q + j] == best;
                        if (hit) break;
                    }
                while (q < C - 1 && LD(row[q * sc]) * w[q] != best) q++;
                idx[n * P + p] = q;
            }
        }
}

/* gate_apply: out = x * mc * ms, out laid out like x. */
void gate_apply(const T *x, const float *mc, const float *ms, T *out, I N, I C, I P, I sn, I sc, I sp,
                int threads) {
    if (sc == 1 && sp != 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I p = 0; p < P; p++) {
                const T *row = x + n * sn + p * sp;
                T *orow = out + n * sn + p * sp;
                const float *w = mc + n * C;
                float s = ms[n * P + p];
                for (I c = 0; c < C; c++) orow[c] = ST(LD(row[c]) * w[c] * s);
            }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (I n = 0; n < N; n++)
        for (I c = 0; c < C; c++) {
            const T *row = x + n * sn + c * sc;
            T *orow = out + n * sn + c * sc;
            const float *s = ms + n * P;
            float w = mc[n * C + c];
            if (sp == 1)
                for (I p = 0; p < P; p++) orow[p] = ST(LD(row[p]) * w * s[p]);
            else
                for (I p = 0; p < P; p++) orow[p * sp] = ST(LD(row[p * sp]) * w * s[p]);
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
        I nb = (C + BLOCK - 1) / BLOCK;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
        for (I n = 0; n < N; n++)
            for (I b = 0; b < nb; b++) {
                I c0 = b * BLOCK, cb = C - c0 < BLOCK ? C - c0 : BLOCK;
                float acc[BLOCK];
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
