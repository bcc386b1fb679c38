"""The Triton kernels of the `triton` implementation (see `triton_gpu` for what they
compute). Imported on first use only: `triton.jit` reads TRITON_INTERPRET when this module
is imported, and decides then between compiling for CUDA and Triton's CPU interpreter."""

import triton
import triton.language as tl


@triton.jit
def compose(q, kv, PHI: tl.constexpr):
    if PHI == 0:
        d = q - kv
        out = -(d * d)
    elif PHI == 1:
        out = -tl.abs(q - kv)
    else:
        out = q * kv
    return out

@triton.jit
def forward_kernel(x_ptr, q_ptr, k_ptr, prior_ptr, y_ptr, lse_ptr, C, H, W, G, Ho, Wo, M,
                   K: tl.constexpr, S: tl.constexpr, PHI: tl.constexpr, M_PAD: tl.constexpr,
                   BLOCK: tl.constexpr, F64: tl.constexpr):
    acc_t = tl.float64 if F64 else tl.float32
    bg = tl.program_id(0)
    b = bg // G
    g = bg % G
    R: tl.constexpr = K // 2
    L = Ho * Wo
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = p < L
    i = p // Wo
    j = p % Wo
    q = tl.load(q_ptr + bg * L + p, mask=valid, other=0.0).to(acc_t)
    mx = tl.full([BLOCK], float("-inf"), acc_t)
    for di in tl.static_range(K):
        for dj in tl.static_range(K):
            yy = i * S + di - R
            xx = j * S + dj - R
            inside = valid & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            kv = tl.load(k_ptr + (bg * H + yy) * W + xx, mask=inside, other=0.0).to(acc_t)
            pr = tl.load(prior_ptr + g * K * K + di * K + dj).to(acc_t)
            logit = tl.where(inside, compose(q, kv, PHI) + pr, float("-inf"))
            mx = tl.maximum(mx, logit)
    mx = tl.where(valid, mx, 0.0)
    c = tl.arange(0, M_PAD)
    chan = g * M + c
    cmask = (c < M) & (chan < C)
    total = tl.zeros([BLOCK], acc_t)
    acc = tl.zeros([M_PAD, BLOCK], acc_t)
    for di in tl.static_range(K):
        for dj in tl.static_range(K):
            yy = i * S + di - R
            xx = j * S + dj - R
            inside = valid & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            kv = tl.load(k_ptr + (bg * H + yy) * W + xx, mask=inside, other=0.0).to(acc_t)
            pr = tl.load(prior_ptr + g * K * K + di * K + dj).to(acc_t)
            e = tl.where(inside, tl.exp(compose(q, kv, PHI) + pr - mx), 0.0)
            total += e
            xv = tl.load(x_ptr + ((b * C + chan[:, None]) * H + yy[None, :]) * W + xx[None, :],
                         mask=cmask[:, None] & inside[None, :], other=0.0).to(acc_t)
            acc += xv * e[None, :]
    total = tl.where(valid, total, 1.0)
    out = acc / total[None, :]
    tl.store(y_ptr + (b * C + chan[:, None]) * L + p[None, :], out.to(y_ptr.dtype.element_ty),
             mask=cmask[:, None] & valid[None, :])
    tl.store(lse_ptr + bg * L + p, (mx + tl.log(total)).to(lse_ptr.dtype.element_ty), mask=valid)

@triton.jit
def backward_output_kernel(x_ptr, q_ptr, k_ptr, prior_ptr, y_ptr, lse_ptr, dy_ptr, dq_ptr, dk_ptr,
                           dprior_ptr, C, H, W, G, Ho, Wo, M, K: tl.constexpr, S: tl.constexpr,
                           PHI: tl.constexpr, M_PAD: tl.constexpr, BLOCK: tl.constexpr,
                           F64: tl.constexpr):
    acc_t = tl.float64 if F64 else tl.float32
    bg = tl.program_id(0)
    b = bg // G
    g = bg % G
    R: tl.constexpr = K // 2
    L = Ho * Wo
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = p < L
    i = p // Wo
    j = p % Wo
    c = tl.arange(0, M_PAD)
    chan = g * M + c
    cmask = (c < M) & (chan < C)
    both = cmask[:, None] & valid[None, :]
    q = tl.load(q_ptr + bg * L + p, mask=valid, other=0.0).to(acc_t)
    lse = tl.load(lse_ptr + bg * L + p, mask=valid, other=0.0).to(acc_t)
    offs = (b * C + chan[:, None]) * L + p[None, :]
    dyv = tl.load(dy_ptr + offs, mask=both, other=0.0).to(acc_t)
    yv = tl.load(y_ptr + offs, mask=both, other=0.0).to(acc_t)
    dsum = tl.sum(dyv * yv, axis=0)  # sum over the window of w * dw
    dq = tl.zeros([BLOCK], acc_t)
    for di in tl.static_range(K):
        for dj in tl.static_range(K):
            yy = i * S + di - R
            xx = j * S + dj - R
            inside = valid & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            kv = tl.load(k_ptr + (bg * H + yy) * W + xx, mask=inside, other=0.0).to(acc_t)
            pr = tl.load(prior_ptr + g * K * K + di * K + dj).to(acc_t)
            w = tl.where(inside, tl.exp(compose(q, kv, PHI) + pr - lse), 0.0)
            xv = tl.load(x_ptr + ((b * C + chan[:, None]) * H + yy[None, :]) * W + xx[None, :],
                         mask=cmask[:, None] & inside[None, :], other=0.0).to(acc_t)
            dl = w * (tl.sum(dyv * xv, axis=0) - dsum)
            if PHI == 0:
                gq = -2.0 * (q - kv) * dl
                gk = -gq
            elif PHI == 1:
                d = q - kv
                sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
                gq = -sign * dl
                gk = sign * dl
            else:
                gq = kv * dl
                gk = q * dl
            dq += gq
            tl.atomic_add(dk_ptr + (bg * H + yy) * W + xx, gk.to(dk_ptr.dtype.element_ty), mask=inside)
            tl.atomic_add(dprior_ptr + g * K * K + di * K + dj,
                          tl.sum(dl, axis=0).to(dprior_ptr.dtype.element_ty))
    tl.store(dq_ptr + bg * L + p, dq.to(dq_ptr.dtype.element_ty), mask=valid)

@triton.jit
def backward_input_kernel(q_ptr, k_ptr, prior_ptr, lse_ptr, dy_ptr, dx_ptr, C, H, W, G, Ho, Wo, M,
                          K: tl.constexpr, S: tl.constexpr, PHI: tl.constexpr, M_PAD: tl.constexpr,
                          BLOCK: tl.constexpr, F64: tl.constexpr):
    acc_t = tl.float64 if F64 else tl.float32
    bg = tl.program_id(0)
    b = bg // G
    g = bg % G
    R: tl.constexpr = K // 2
    L = Ho * Wo
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = pix < H * W
    y = pix // W
    x = pix % W
    c = tl.arange(0, M_PAD)
    chan = g * M + c
    cmask = (c < M) & (chan < C)
    kv = tl.load(k_ptr + bg * H * W + pix, mask=valid, other=0.0).to(acc_t)
    dx = tl.zeros([M_PAD, BLOCK], acc_t)
    for di in tl.static_range(K):
        for dj in tl.static_range(K):
            yy = y + R - di  # = i * S for the output row i whose window holds this pixel
            xx = x + R - dj
            ok = valid & (yy >= 0) & (xx >= 0) & (yy % S == 0) & (xx % S == 0)
            i = yy // S
            j = xx // S
            ok = ok & (i < Ho) & (j < Wo)
            q = tl.load(q_ptr + bg * L + i * Wo + j, mask=ok, other=0.0).to(acc_t)
            lse = tl.load(lse_ptr + bg * L + i * Wo + j, mask=ok, other=0.0).to(acc_t)
            pr = tl.load(prior_ptr + g * K * K + di * K + dj).to(acc_t)
            w = tl.where(ok, tl.exp(compose(q, kv, PHI) + pr - lse), 0.0)
            dyv = tl.load(dy_ptr + (b * C + chan[:, None]) * L + (i * Wo + j)[None, :],
                          mask=cmask[:, None] & ok[None, :], other=0.0).to(acc_t)
            dx += w[None, :] * dyv
    tl.store(dx_ptr + (b * C + chan[:, None]) * H * W + pix[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=cmask[:, None] & valid[None, :])
