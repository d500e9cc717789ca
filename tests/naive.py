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


def efficient(m, x: torch.Tensor) -> torch.Tensor:
    """rho_q(Q) (rho_k(K)^T V) per head, with the softmaxes written out."""
    h = m.cfg.heads
    out = []
    for img in x:
        C, H, W = img.shape
        keys = conv1x1(m.keys.weight, img, m.keys.bias).reshape(-1, H * W)  # (d_k, N)
        queries = conv1x1(m.queries.weight, img, m.queries.bias).reshape(-1, H * W)
        values = conv1x1(m.values.weight, img, m.values.bias).reshape(-1, H * W)  # (d_v, N)
        dk, dv = keys.shape[0] // h, values.shape[0] // h
        attended = torch.zeros(values.shape[0], H * W, dtype=x.dtype)
        for n in range(h):
            k = torch.exp(keys[n * dk : (n + 1) * dk])
            k = k / k.sum(dim=1, keepdim=True)  # over positions
            q = torch.exp(queries[n * dk : (n + 1) * dk])
            q = q / q.sum(dim=0, keepdim=True)  # over the head's channels
            v = values[n * dv : (n + 1) * dv]
            for i in range(H * W):
                for d in range(dk):  # the sum over key positions j of q[d, i] k[d, j] v[:, j], for this query alone
                    attended[n * dv : (n + 1) * dv, i] += q[d, i] * (k[d] * v).sum(dim=1)
        y = conv1x1(m.reprojection.weight, attended.reshape(-1, H, W), m.reprojection.bias) + img
        out.append(avg_pool2(y) if m.cfg.stride == 2 else y)
    return torch.stack(out)


def mhsa(m, x: torch.Tensor) -> torch.Tensor:
    """BoTNet's MHSA: per head and pair, (q . k + q . r^h_{a-y} + q . r^w_{b-x}) / sqrt(d), softmax over all pixels."""
    h, size = m.cfg.heads, m.cfg.size
    out = []
    for img in x:
        C, H, W = img.shape
        d = C // h
        qkv = conv1x1(m.to_qkv.weight, img)
        q, k, v = qkv[:C], qkv[C : 2 * C], qkv[2 * C :]
        y = torch.zeros(C, H, W, dtype=x.dtype)
        for n in range(h):
            sl = slice(n * d, (n + 1) * d)
            for i in range(H):
                for j in range(W):
                    # every key (a, b) at once: r[a, b] = r^h_{a-i} + r^w_{b-j}, looked up by offset for this query
                    r = (m.rel_height[torch.arange(H) - i + size - 1][:, None]
                         + m.rel_width[torch.arange(W) - j + size - 1][None])  # (H, W, d)
                    logits = (k[sl].permute(1, 2, 0) + r) @ q[sl, i, j] / math.sqrt(d)  # (H, W)
                    w = torch.softmax(logits.flatten(), dim=0).view(H, W)
                    y[sl, i, j] = (w[None] * v[sl]).sum(dim=(1, 2))
        out.append(avg_pool2(y) if m.cfg.stride == 2 else y)
    return torch.stack(out)


def neighborhood(m, x: torch.Tensor) -> torch.Tensor:
    """NAT: each query's k x k window, centred and shifted inwards at the borders, written out per pixel."""
    h, k = m.cfg.heads, m.cfg.window
    out = []
    for img in x:
        C, H, W = img.shape
        d = C // h
        qkv = conv1x1(m.qkv.weight, img, m.qkv.bias)
        q, kk, v = qkv[:C], qkv[C : 2 * C], qkv[2 * C :]
        y = torch.zeros(C, H, W, dtype=x.dtype)
        for i in range(H):
            top = min(max(i - k // 2, 0), H - min(k, H))
            for j in range(W):
                left = min(max(j - k // 2, 0), W - min(k, W))
                keys = [(a, b) for a in range(top, top + min(k, H)) for b in range(left, left + min(k, W))]
                for n in range(h):
                    sl = slice(n * d, (n + 1) * d)
                    logits = torch.stack([q[sl, i, j] @ kk[sl, a, b] / math.sqrt(d)
                                          + m.rpb[n, a - i + k - 1, b - j + k - 1] for a, b in keys])
                    w = torch.softmax(logits, dim=0)
                    y[sl, i, j] = sum(wi * v[sl, a, b] for wi, (a, b) in zip(w, keys))
        y = conv1x1(m.proj.weight, y, m.proj.bias)
        out.append(avg_pool2(y) if m.cfg.stride == 2 else y)
    return torch.stack(out)


def window(m, x: torch.Tensor) -> torch.Tensor:
    """Swin, pixel by pixel: pad, roll, and attend within the window each pixel lands in; pairs from different
    regions of the rolled map get -100."""
    h, M = m.cfg.heads, m.cfg.window
    out = []
    for img in x:
        C, H, W = img.shape
        d = C // h
        side = min(M, H, W)
        shift = side // 2 if m.cfg.shifted and min(H, W) > M else 0
        Hp, Wp = -(-H // side) * side, -(-W // side) * side
        padded = torch.zeros(C, Hp, Wp, dtype=x.dtype)
        padded[:, :H, :W] = img
        qkv = conv1x1(m.qkv.weight, padded, m.qkv.bias)
        q, kk, v = qkv[:C], qkv[C : 2 * C], qkv[2 * C :]

        def region(p: int, length: int, side: int = side, shift: int = shift) -> int:
            """Which of the rolled map's three strips position p is in."""
            return 0 if p < length - side else 1 if p < length - shift else 2

        y = torch.zeros(C, Hp, Wp, dtype=x.dtype)
        for i in range(Hp):  # i, j: positions in the rolled map; the pixel there came from (i + shift, j + shift)
            for j in range(Wp):
                top, left = i // side * side, j // side * side
                members = [(a, b) for a in range(top, top + side) for b in range(left, left + side)]
                for n in range(h):
                    sl = slice(n * d, (n + 1) * d)
                    logits = []
                    for a, b in members:
                        src_q, src_k = ((i + shift) % Hp, (j + shift) % Wp), ((a + shift) % Hp, (b + shift) % Wp)
                        logit = q[sl][:, src_q[0], src_q[1]] @ kk[sl][:, src_k[0], src_k[1]] / math.sqrt(d)
                        logit = logit + m.rpb[n, a - i + M - 1, b - j + M - 1]
                        if shift and (region(i, Hp), region(j, Wp)) != (region(a, Hp), region(b, Wp)):
                            logit = logit - 100.0
                        logits.append(logit)
                    w = torch.softmax(torch.stack(logits), dim=0)
                    value = sum(wi * v[sl][:, (a + shift) % Hp, (b + shift) % Wp] for wi, (a, b) in zip(w, members))
                    y[sl, (i + shift) % Hp, (j + shift) % Wp] = value
        y = conv1x1(m.proj.weight, y[:, :H, :W], m.proj.bias)
        out.append(avg_pool2(y) if m.cfg.stride == 2 else y)
    return torch.stack(out)


NAIVE = {"conv": conv, "gsa": gsa, "local": local, "nonlocal": non_local, "axial": axial, "efficient": efficient,
         "mhsa": mhsa, "neighborhood": neighborhood, "window": window}
