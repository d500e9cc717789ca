"""Naive implementations of every variant, written from the papers' equations with explicit loops.

Each takes a built module (for its weights) in eval mode and a float64 input, and reads nothing
from the module but parameters and batch-norm statistics, so a bug in a fast path cannot hide in
a shared helper. Only for tiny inputs.
"""

from __future__ import annotations

import math

import torch


def bn(x: torch.Tensor, layer: torch.nn.BatchNorm2d, channel_dim: int = 0) -> torch.Tensor:
    """Eval-mode batch norm with the channel on ``channel_dim``."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1

    def s(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(shape)

    return (x - s(layer.running_mean)) / torch.sqrt(s(layer.running_var) + layer.eps) * s(layer.weight) + s(
        layer.bias
    )


def conv1x1(w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(out, in, 1, 1) weight applied to a (C, H, W) map, pixel by pixel."""
    C, H, W = x.shape
    out = torch.zeros(w.shape[0], H, W, dtype=x.dtype)
    for i in range(H):
        for j in range(W):
            out[:, i, j] = w[:, :, 0, 0] @ x[:, i, j] + (0 if bias is None else bias)
    return out


def avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pool; on an odd side the last window averages the pixels it has."""
    C, H, W = x.shape
    out = torch.zeros(C, (H + 1) // 2, (W + 1) // 2, dtype=x.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2))
    return out


def conv(m, x: torch.Tensor) -> torch.Tensor:
    w = m.conv.weight
    k = w.shape[-1]
    p, s = k // 2, m.cfg.stride
    out = []
    for img in x:
        C, H, W = img.shape
        Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        y = torch.zeros(w.shape[0], Ho, Wo, dtype=x.dtype)
        for i in range(Ho):
            for j in range(Wo):
                for a in range(k):
                    for c in range(k):
                        r, col = i * s + a - p, j * s + c - p
                        if 0 <= r < H and 0 <= col < W:
                            y[:, i, j] += w[:, :, a, c] @ img[:, r, col]
        out.append(bn(y, m.bn))
    return torch.stack(out)


def gsa(m, x: torch.Tensor) -> torch.Tensor:
    cfg = m.cfg
    h, dk, C = cfg.heads, m.dim_key, cfg.dim
    dkh, dvh = dk // h, C // h
    out = []
    for img in x:
        _, H, W = img.shape
        qkv = conv1x1(m.to_qkv.weight, img)
        q, k, v = qkv[:dk], qkv[dk : 2 * dk], qkv[2 * dk :]
        y = torch.zeros(C, H, W, dtype=x.dtype)
        for n in range(h):
            qn = q[n * dkh : (n + 1) * dkh]
            kn = k[n * dkh : (n + 1) * dkh].reshape(dkh, -1)
            vn = v[n * dvh : (n + 1) * dvh]
            if cfg.content:
                rho = torch.exp(kn) / torch.exp(kn).sum(dim=1, keepdim=True)  # softmax over positions
                context = torch.zeros(dkh, dvh, dtype=x.dtype)
                for p in range(H * W):
                    context += torch.outer(rho[:, p], vn[:, p // W, p % W])
                for i in range(H):
                    for j in range(W):
                        y[n * dvh : (n + 1) * dvh, i, j] += context.T @ qn[:, i, j]
        if cfg.positional:
            r_c = (m.rel_col.shape[0] - 1) // 2
            col = torch.zeros(C, H, W, dtype=x.dtype)
            for n in range(h):
                qn, vn = q[n * dkh : (n + 1) * dkh], v[n * dvh : (n + 1) * dvh]
                for i in range(H):
                    for j in range(W):
                        for a in range(H):
                            if abs(a - i) <= r_c:
                                weight = qn[:, i, j] @ m.rel_col[a - i + r_c]
                                col[n * dvh : (n + 1) * dvh, i, j] += weight * vn[:, a, j]
            col = bn(col, m.norm)
            for n in range(h):
                qn, cn = q[n * dkh : (n + 1) * dkh], col[n * dvh : (n + 1) * dvh]
                for i in range(H):
                    for j in range(W):
                        for b in range(W):
                            if abs(b - j) <= r_c:
                                weight = qn[:, i, j] @ m.rel_row[b - j + r_c]
                                y[n * dvh : (n + 1) * dvh, i, j] += weight * cn[:, i, b]
        out.append(avg_pool2(y) if cfg.stride == 2 else y)
    return torch.stack(out)


def local(m, x: torch.Tensor) -> torch.Tensor:
    cfg = m.cfg
    h, C = cfg.heads, cfg.dim
    dh, p = C // h, cfg.window // 2
    out = []
    for img in x:
        _, H, W = img.shape
        qkv = conv1x1(m.to_qkv.weight, img)
        q, kk, v = qkv[:C], qkv[C : 2 * C], qkv[2 * C :]
        y = torch.zeros(C, H, W, dtype=x.dtype)
        for n in range(h):
            sl = slice(n * dh, (n + 1) * dh)
            for i in range(H):
                for j in range(W):
                    logits, values = [], []
                    for a in range(i - p, i + p + 1):
                        for b in range(j - p, j + p + 1):
                            if 0 <= a < H and 0 <= b < W:
                                r = torch.cat([m.rel_row[n, a - i + p], m.rel_col[n, b - j + p]])
                                logits.append(q[sl, i, j] @ (kk[sl, a, b] + r))
                                values.append(v[sl, a, b])
                    w = torch.softmax(torch.stack(logits), dim=0)
                    y[sl, i, j] = sum(wi * vi for wi, vi in zip(w, values))
        out.append(avg_pool2(y) if cfg.stride == 2 else y)
    return torch.stack(out)


def non_local(m, x: torch.Tensor) -> torch.Tensor:
    out = []
    for img in x:
        C, H, W = img.shape
        theta = conv1x1(m.theta.weight, img, m.theta.bias).reshape(-1, H * W).T  # (N, d)
        phi = conv1x1(m.phi.weight, img, m.phi.bias)
        g = conv1x1(m.g.weight, img, m.g.bias)
        if m.cfg.subsample:  # 2x2 max-pool, explicit
            blocks = [(i, j) for i in range(0, H, 2) for j in range(0, W, 2)]  # partial on odd sides
            phi = torch.stack([phi[:, i : i + 2, j : j + 2].amax(dim=(1, 2)) for i, j in blocks], dim=1)
            g = torch.stack([g[:, i : i + 2, j : j + 2].amax(dim=(1, 2)) for i, j in blocks], dim=1)
        phi, g = phi.reshape(phi.shape[0], -1).T, g.reshape(g.shape[0], -1).T  # (M, d)
        f = torch.exp(theta @ phi.T)  # (N, M) explicit
        y = (f / f.sum(dim=1, keepdim=True)) @ g  # (N, d)
        z = conv1x1(m.w_z.weight, y.T.reshape(-1, H, W), m.w_z.bias)
        z = bn(z, m.bn) + img
        out.append(avg_pool2(z) if m.cfg.stride == 2 else z)
    return torch.stack(out)


def _axial_layer(layer, img: torch.Tensor) -> torch.Tensor:
    """One layer along the height of a (C, H, W) map."""
    C, H, W = img.shape
    h = layer.cfg.heads
    d = C // h
    r = (layer.relative.shape[0] - 1) // 2
    qkv = bn(conv1x1(layer.qkv.weight, img), layer.bn_qkv)
    sim_bn, out_bn = layer.bn_similarity, layer.bn_output
    y = torch.zeros(C, H, W, dtype=img.dtype)
    for n in range(h):
        base = n * 2 * d
        q, k, v = qkv[base : base + d // 2], qkv[base + d // 2 : base + d], qkv[base + d : base + 2 * d]
        for col in range(W):
            for o in range(H):
                logits, keys = [], []
                for p in range(H):
                    if abs(p - o) > r:
                        continue
                    rel = layer.relative[p - o + r]
                    rq, rk = rel[: d // 2], rel[d // 2 : d]
                    terms = [q[:, o, col] @ k[:, p, col], q[:, o, col] @ rq, k[:, p, col] @ rk]
                    logit = sum(
                        (t - sim_bn.running_mean[s * h + n]) / math.sqrt(sim_bn.running_var[s * h + n] + sim_bn.eps)
                        * sim_bn.weight[s * h + n] + sim_bn.bias[s * h + n]
                        for s, t in enumerate(terms)
                    )
                    logits.append(logit)
                    keys.append(p)
                w = torch.softmax(torch.stack(logits), dim=0)
                sv = sum(wi * v[:, p, col] for wi, p in zip(w, keys))
                sve = sum(wi * layer.relative[p - o + r][d:] for wi, p in zip(w, keys))
                for c in range(d):
                    for s, t in enumerate((sv[c], sve[c])):
                        ch = (n * d + c) * 2 + s
                        y[n * d + c, o, col] += (t - out_bn.running_mean[ch]) / math.sqrt(
                            out_bn.running_var[ch] + out_bn.eps
                        ) * out_bn.weight[ch] + out_bn.bias[ch]
    return y


def axial(m, x: torch.Tensor) -> torch.Tensor:
    out = []
    for img in x:
        y = _axial_layer(m.height, img)
        y = _axial_layer(m.width, y.transpose(1, 2)).transpose(1, 2)
        out.append(avg_pool2(y) if m.cfg.stride == 2 else y)
    return torch.stack(out)


NAIVE = {"conv": conv, "gsa": gsa, "local": local, "nonlocal": non_local, "axial": axial}
