"""Float64 computations of every loss term's convention, written from the papers and their reference code
(RepDistiller, mdistiller, DIST_KD, dvlab's ReviewKD, torchmetrics' SSIM, the PyTorch KD tutorial), not from
distillab's functions.

`reference(term, outputs)` takes a term and float64 `Outputs`. Learnable parts (projectors, embeddings,
regressors, ABFs) are the term's own modules, used through float64 copies: what is pinned here is the
formula around them (pooling order and sizes, normalisations, reductions, eps placement).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillab.objective import Outputs

Reference = Callable[[nn.Module, Outputs], Tensor]
REFERENCES: dict[str, Reference] = {}


def references(*class_names: str) -> Callable[[Reference], Reference]:
    def register(fn: Reference) -> Reference:
        for name in class_names:
            REFERENCES[name] = fn
        return fn

    return register


def reference(term: nn.Module, outputs: Outputs) -> Tensor:
    """The value `term(outputs)` should have, in float64 (`term` is not changed)."""
    twin = copy.deepcopy(term).double()
    return REFERENCES[type(term).__name__](twin, outputs)


# helpers -------------------------------------------------------------------------------------------------
def log_softmax(z: Tensor) -> Tensor:
    return z - z.logsumexp(1, keepdim=True)


def adaptive_pool(x: Tensor, size: Sequence[int]) -> Tensor:
    """Adaptive average pooling written out: output cell i covers [floor(i H / h), ceil((i + 1) H / h))."""
    h_in, w_in = x.shape[2:]
    h, w = size
    rows = []
    for i in range(h):
        r0, r1 = (i * h_in) // h, math.ceil((i + 1) * h_in / h)
        cols = []
        for j in range(w):
            c0, c1 = (j * w_in) // w, math.ceil((j + 1) * w_in / w)
            cols.append(x[:, :, r0:r1, c0:c1].mean((2, 3)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def to_common(fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Both maps pooled to the smaller size per dimension (8x2 and 4x4 -> 4x2)."""
    size = [min(a, b) for a, b in zip(fs.shape[2:], ft.shape[2:])]
    return adaptive_pool(fs, size), adaptive_pool(ft, size)


def unit_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def student_teacher(term: nn.Module, o: Outputs) -> list[tuple[Tensor, Tensor]]:
    return [(o.student.features[s], o.teacher.features[t]) for s, t in zip(term.student_taps, term.teacher_taps)]


def kl_rows(log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
    """KL(p_t || p_s) of each row, from log-probabilities."""
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)


# task terms ----------------------------------------------------------------------------------------------
@references("CrossEntropy")
def _ce(term, o):
    log_p, eps = log_softmax(o.student.out), term.label_smoothing
    nll = -log_p.gather(1, o.targets[:, None]).squeeze(1)
    return ((1 - eps) * nll - eps * log_p.mean(1)).mean()


@references("Focal")
def _focal(term, o):
    """Lin et al. 2017, multi-class: -alpha_y (1 - p_y)^gamma log p_y, mean over the batch."""
    p = torch.softmax(o.student.out, 1).gather(1, o.targets[:, None]).squeeze(1)
    alpha = torch.ones_like(p) if term.alpha is None else term.alpha.double()[o.targets]
    return (-alpha * (1 - p) ** term.gamma * torch.log(p)).mean()


@references("L1")
def _l1(term, o):
    return (o.student.out - o.targets).abs().mean()


@references("MSE")
def _mse(term, o):
    return ((o.student.out - o.targets) ** 2).mean()


@references("SSIM")
def _ssim(term, o):
    """Gaussian-window SSIM (Wang et al. 2004) as torchmetrics computes it: window 2 * int(3.5 sigma + 0.5) + 1,
    reflect padding, K1 0.01, K2 0.03, variances clamped at 0, mean over pixels then images."""
    x, y, sigma, data_range = o.student.out, o.targets, term.sigma, term.data_range
    size = 2 * int(3.5 * sigma + 0.5) + 1
    d = torch.arange(size, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-((d / sigma) ** 2) / 2)
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(x.shape[1], 1, size, size)
    pad = (size - 1) // 2

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.pad(z, (pad,) * 4, mode="reflect"), window, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy = (blur(x * x) - mx**2).clamp_min(0), (blur(y * y) - my**2).clamp_min(0)
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return 1 - ssim.flatten(1).mean(1).mean()


# logit distillation --------------------------------------------------------------------------------------
def hinton(s: Tensor, t: Tensor, T: float, form: str = "kl") -> Tensor:
    log_p_s, log_p_t = log_softmax(s / T), log_softmax(t / T)
    per_row = kl_rows(log_p_t, log_p_s) if form == "kl" else -(log_p_t.exp() * log_p_s).sum(1)
    return per_row.mean() * T**2


def z_scored(term: nn.Module, *logits: Tensor) -> list[Tensor]:
    """The logit standardization authors' `normalize` (Sun et al. 2024): (z - mean) / (1e-7 + unbiased std) per
    row, where the term asks for it."""
    if not getattr(term, "logit_standardization", False):
        return list(logits)
    return [(z - z.mean(1, keepdim=True)) / (1e-7 + z.std(1, keepdim=True)) for z in logits]


@references("KD")
def _kd(term, o):
    return hinton(*z_scored(term, o.student.out, o.teacher.out), term.temperature, term.form)


@references("MultiTeacherKD")
def _multi_teacher(term, o):
    logits = [t.out for t in o.teachers]
    w = [1.0] * len(logits) if term.teacher_weights is None else term.teacher_weights.tolist()
    mean = sum(wi * li for wi, li in zip(w, logits)) / sum(w)
    return hinton(*z_scored(term, o.student.out, mean), term.temperature)


@references("DKD")
def _dkd(term, o):
    """mdistiller's dkd_loss: TCKD on (p_target, sum of the others), NCKD over the other classes alone; each
    row's non-target mass is summed (never 1 - p_target, which cancels to 0 for large gaps)."""
    student, teacher = z_scored(term, o.student.out, o.teacher.out)
    s, t, y, T = student / term.temperature, teacher / term.temperature, o.targets, term.temperature
    total = s.new_zeros(())
    for si, ti, yi in zip(s, t, y):
        others = torch.arange(len(si)) != yi
        ps, pt = torch.softmax(si, 0), torch.softmax(ti, 0)
        bs, bt = torch.stack([ps[yi], ps[others].sum()]), torch.stack([pt[yi], pt[others].sum()])
        qs, qt = torch.log_softmax(si[others], 0), torch.log_softmax(ti[others], 0)
        tckd = (bt * (bt.log() - bs.log())).sum()
        nckd = (qt.exp() * (qt - qs)).sum()
        total = total + term.alpha * tckd + term.beta * nckd
    return total / len(s) * T**2


@references("NKD")
def _nkd(term, o):
    """yzd-v/cls_KD's NKDLoss: -mean(t_t * log s_t) at T 1, then -gamma T^2 mean(sum(T_i log S_i)) over the other
    classes, the target column removed (a boolean mask) before each softmax."""
    T, total = term.temperature, o.student.out.new_zeros(())
    for si, ti, yi in zip(o.student.out, o.teacher.out, o.targets):
        others = torch.arange(len(si)) != yi
        target = -torch.softmax(ti, 0)[yi] * torch.log_softmax(si, 0)[yi]
        non = (torch.softmax(ti[others] / T, 0) * torch.log_softmax(si[others] / T, 0)).sum()
        total = total + target - term.gamma * T**2 * non
    return total / len(o.targets)


@references("TTM", "WTTM")
def _ttm(term, o):
    """zkxufo/TTM's TTM and WTTM: p_t = softmax(t) ** l / its sum, KL(p_t || softmax(s)) summed per row with
    F.kl_div(log_softmax(s), p_t), the mean over rows (WTTM: each row's KL times sum(softmax(t) ** l))."""
    p_t = torch.softmax(o.teacher.out, 1) ** term.exponent
    norm = p_t.sum(1)
    kl = F.kl_div(torch.log_softmax(o.student.out, 1), p_t / norm[:, None], reduction="none").sum(1)
    return (norm * kl).mean() if type(term).__name__ == "WTTM" else kl.mean()


@references("CTKD")
def _ctkd(term, o):
    """zhengli97/CTKD's global temperature: T = t_start + t_end * sigmoid(theta) (their 1 + 20 sigmoid), then their
    DistillKL: KLDivLoss(batchmean)(log_softmax(s / T), softmax(t / T)) * T * T (the reversal acts on gradients
    only)."""
    T = term.min_temperature + term.span * torch.sigmoid(term.theta.detach())
    p_t = torch.softmax(o.teacher.out / T, 1)
    return F.kl_div(torch.log_softmax(o.student.out / T, 1), p_t, reduction="batchmean") * T * T


@references("ClassAttentionTransfer")
def _catkd(term, o):
    """GzyAftermath/CAT-KD's CAT_loss on the `_test` networks: the classifier's weight as a bias-free 1x1 conv over
    the last map (the CAMs at full size), then adaptive average pooling to CAM_RESOLUTION, F.normalize over
    dim=(2, 3) if IF_NORMALIZE, F.mse_loss."""
    student_fc, teacher_fc = term.classifiers

    def cams(feature: Tensor, weight: Tensor) -> Tensor:
        full = F.conv2d(feature, weight.double()[:, :, None, None])
        pooled = F.adaptive_avg_pool2d(full, (term.resolution, term.resolution))
        return F.normalize(pooled, dim=(2, 3)) if term.normalize else pooled

    return F.mse_loss(
        cams(o.student.features[term.student_layer], student_fc.weight),
        cams(o.teacher.features[term.teacher_layer], teacher_fc.weight.detach()),
    )


@references("SimKD")
def _simkd(term, o):
    """DefangChen/SimKD's loss on the tapped projector output: nn.MSELoss()(trans_feat_s, trans_feat_t), the
    larger map average-pooled to the smaller's size first (theirs on square maps by height; here by each side)."""
    s, t = o.student.features[term.student_taps[0]], o.teacher.features[term.teacher_layer]
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    return F.mse_loss(adaptive_pool(s, (h, w)), adaptive_pool(t, (h, w)))


@references("MLKD")
def _mlkd(term, o):
    """Jin-Ying/Multi-Level-Logit-Distillation's KD_ours, its sums written out (kd_loss, cc_loss, bc_loss with
    reduce=True; `* mask).mean()` of a scalar; the strong part's last two temperatures on the weak logits; the
    thresholds by numpy's 50th percentile); with one view, image_strong is image_weak. Logit standardization in
    kd_loss only (Sun et al.'s version)."""
    import numpy as np

    s, t = o.student.out, o.teacher.out
    (s_w, s_s), (t_w, t_s) = (s.chunk(2), t.chunk(2)) if term.views == 2 else ((s, s), (t, t))

    def z(x: Tensor) -> Tensor:
        return (x - x.mean(-1, keepdim=True)) / (1e-7 + x.std(-1, keepdim=True)) if term.logit_standardization else x

    def kd(a: Tensor, b: Tensor, T: float) -> Tensor:
        return F.kl_div(F.log_softmax(z(a) / T, 1), F.softmax(z(b) / T, 1), reduction="none").sum(1).mean() * T**2

    def cc(a: Tensor, b: Tensor, T: float) -> Tensor:
        pa, pb = F.softmax(a / T, 1), F.softmax(b / T, 1)
        return ((pb.T @ pb - pa.T @ pa) ** 2).sum() / a.shape[1]

    def bc(a: Tensor, b: Tensor, T: float) -> Tensor:
        pa, pb = F.softmax(a / T, 1), F.softmax(b / T, 1)
        return ((pb @ pb.T - pa @ pa.T) ** 2).sum() / a.shape[0]

    p_t = F.softmax(t_w.detach(), 1)
    confidence = p_t.max(1).values
    mask = confidence.le(float(np.percentile(confidence.numpy(), 50)))
    class_confidence = p_t.sum(0)
    class_mask = class_confidence.le(float(np.percentile(class_confidence.numpy(), 50)))
    Ts = term.temperatures
    kd_weak = sum((kd(s_w, t_w, T) * mask).mean() for T in Ts)
    kd_strong = sum(kd(s_s, t_s, T) for T in Ts[:3]) + sum(kd(s_w, t_w, T) for T in Ts[3:])
    cc_weak = sum((cc(s_w, t_w, T) * class_mask).mean() for T in Ts)
    bc_weak = sum((bc(s_w, t_w, T) * mask).mean() for T in Ts)
    return kd_weak + kd_strong + cc_weak + bc_weak


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """DIST_KD's pearson_correlation: cosine of the centred rows, eps added to the product of the norms."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@references("DIST")
def _dist(term, o):
    T = term.temperature
    ps, pt = torch.softmax(o.student.out / T, 1), torch.softmax(o.teacher.out / T, 1)
    inter = 1 - pearson_rows(ps, pt).mean()
    intra = 1 - pearson_rows(ps.T, pt.T).mean()
    return T**2 * (term.beta * inter + term.gamma * intra)


# feature distillation ------------------------------------------------------------------------------------
@references("FeatureMSE")
def _fitnet(term, o):
    return sum(((p(fs) - ft) ** 2).mean() for p, (fs, ft) in zip(term.projectors, student_teacher(term, o)))


@references("Cosine")
def _cosine(term, o):
    ((fs, ft),) = student_teacher(term, o)
    s, t = fs.flatten(1), ft.flatten(1)
    s = s.reshape(len(s), -1, term.pool_student).mean(2)  # avg_pool1d by the width ratio
    t = t.reshape(len(t), -1, term.pool_teacher).mean(2)
    if term.projector is not None:
        s = term.projector(s)
    return (1 - (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))).mean()


@references("AttentionTransfer")
def _at(term, o):
    def attention(f: Tensor) -> Tensor:
        return unit_rows(f.pow(2).mean(1).flatten(1))

    total = 0.0
    for fs, ft in student_teacher(term, o):
        fs, ft = to_common(fs, ft)  # features first, then the maps (RepDistiller, mdistiller)
        total = total + ((attention(fs) - attention(ft)) ** 2).mean()
    return total


@references("SelfDistillation")
def _self(term, o):
    deep = o.student.features[term.deep].detach()  # the target: the deep layer is not pulled towards the shallow ones
    return sum(((p(o.student.features[layer]) - deep) ** 2).mean() for p, layer in zip(term.projectors, term.shallow))


@references("NST")
def _nst(term, o):
    total = 0.0
    for fs, ft in student_teacher(term, o):
        fs, ft = to_common(fs, ft)
        s, t = fs.flatten(2), ft.flatten(2)
        s, t = s / s.norm(dim=2, keepdim=True).clamp_min(1e-12), t / t.norm(dim=2, keepdim=True).clamp_min(1e-12)

        def k(a: Tensor, b: Tensor) -> Tensor:
            return (torch.einsum("bip,bjp->bij", a, b) ** 2).mean()

        total = total + k(t, t) + k(s, s) - 2 * k(s, t)
    return total


@references("VID")
def _vid(term, o):
    total = 0.0
    for (fs, ft), regressor, log_scale in zip(student_teacher(term, o), term.regressors, term.log_scales):
        fs, ft = to_common(fs, ft)
        var = (torch.log(1 + torch.exp(log_scale)) + term.eps).view(1, -1, 1, 1)
        total = total + (0.5 * ((regressor(fs) - ft) ** 2 / var + var.log())).mean()
    return total


# relations between the samples of a batch ----------------------------------------------------------------
def flat_pair(term, o) -> tuple[Tensor, Tensor]:
    ((fs, ft),) = student_teacher(term, o)
    return fs.flatten(1), ft.flatten(1)


@references("SP")
def _sp(term, o):
    s, t = flat_pair(term, o)
    b = len(s)
    return ((unit_rows(t @ t.T) - unit_rows(s @ s.T)) ** 2).sum() / b**2


@references("PKT")
def _pkt(term, o):
    def conditional(f: Tensor) -> Tensor:
        f = f / (f.norm(dim=1, keepdim=True) + 1e-7)
        k = (f @ f.T + 1) / 2
        return k / k.sum(1, keepdim=True)

    s, t = flat_pair(term, o)
    ps, pt = conditional(s), conditional(t)
    return (pt * torch.log((pt + 1e-7) / (ps + 1e-7))).mean()


def smooth_l1(a: Tensor, b: Tensor) -> Tensor:
    d = (a - b).abs()
    return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()


@references("RKD")
def _rkd(term, o):
    s, t = flat_pair(term, o)
    b = len(s)
    if b < 2:
        return s.new_zeros(())

    def distances(e: Tensor) -> Tensor:
        d = (e[:, None, :] - e[None, :, :]).norm(dim=2)
        off = ~torch.eye(b, dtype=torch.bool)
        return d / d[off].mean()

    def angles(e: Tensor) -> Tensor:
        u = e[None, :, :] - e[:, None, :]  # u[i, j] = e_j - e_i
        n = u.norm(dim=2, keepdim=True)
        u = torch.where(n > 0, u / n.clamp_min(1e-300), torch.zeros_like(u))
        return torch.einsum("ijd,ikd->ijk", u, u).flatten()

    return term.distance_weight * smooth_l1(distances(s), distances(t)) + term.angle_weight * smooth_l1(
        angles(s), angles(t)
    )


@references("CC")
def _cc(term, o):
    s, t = flat_pair(term, o)
    if len(s) < 2:
        return s.new_zeros(())
    e_s, e_t = term.embed_student(s), term.embed_teacher(t)
    if (
        term.normalize
    ):  # RepDistiller trains CC on the plain linear embeddings (its LinearEmbed); CRD's Embed normalises
        e_s, e_t = unit_rows(e_s), unit_rows(e_t)
    d = (e_s - e_t).abs()
    return (d[:-1] * d[1:]).sum(1).mean()


@references("CRD")
def _crd(term, o):
    """RepDistiller's ContrastMemory + ContrastLoss, both directions; Z from this batch when unset."""
    s, t = flat_pair(term, o)
    e_s, e_t = unit_rows(term.embed_student(s)), unit_rows(term.embed_teacher(t))
    rows = torch.cat([o.index[:, None], term.draw_negatives(term.targets[o.index])], dim=1)
    n, k = len(term.targets), rows.shape[1] - 1
    total = 0.0
    for which, (anchor, memory) in enumerate(((e_s, term.memory_teacher), (e_t, term.memory_student))):
        out = torch.exp(torch.einsum("bkd,bd->bk", memory[rows], anchor) / term.temperature)
        z = (out.mean() * n).detach() if term.z[which] < 0 else term.z[which]  # a constant, as RepDistiller's .item()
        p = out / z
        noise = k / n
        total = total - (
            torch.log(p[:, 0] / (p[:, 0] + noise + 1e-7)).sum() + torch.log(noise / (p[:, 1:] + noise + 1e-7)).sum()
        ) / len(anchor)
    return total


# methods with an init stage ------------------------------------------------------------------------------
@references("FSP")
def _fsp(term, o):
    def matrices(maps: list[Tensor]) -> list[Tensor]:
        out = []
        for bottom, top in zip(maps[:-1], maps[1:]):
            bottom, top = to_common(bottom, top)
            out.append(torch.einsum("bthw,bchw->btc", top, bottom) / (top.shape[2] * top.shape[3]))
        return out

    pairs = student_teacher(term, o)
    s, t = matrices([fs for fs, _ in pairs]), matrices([ft for _, ft in pairs])
    return sum(((a - b) ** 2).mean() for a, b in zip(s, t))


@references("ActivationBoundaries")
def _ab(term, o):
    """RepDistiller's ABLoss: criterion_alternative_L2 / batch / 1000 * 3, pair i of n weighted 2^(i - n + 1)."""
    pairs = student_teacher(term, o)
    n, batch, m = len(pairs), len(pairs[0][0]), term.margin
    total = 0.0
    for i, ((fs, ft), connector) in enumerate(zip(pairs, term.connectors)):
        x = connector(fs)
        loss = ((x + m) ** 2 * ((x > -m) & (ft <= 0)) + (x - m) ** 2 * ((x <= m) & (ft > 0))).abs().sum()
        total = total + 2.0 ** (i - n + 1) * loss / batch / 1000 * 3
    return total


@references("FactorTransfer")
def _ft(term, o):
    ((fs, ft),) = student_teacher(term, o)
    factor_s, factor_t = to_common(term.translator(fs), term.encoder(ft))

    def factor(f: Tensor) -> Tensor:
        return unit_rows(f.pow(2).mean(1).flatten(1))

    return (factor(factor_s) - factor(factor_t)).abs().mean()


# ReviewKD ------------------------------------------------------------------------------------------------
@references("ReviewKD")
def _reviewkd(term, o):
    """dvlab's ReviewKD student: the deepest feature through its ABF alone, each shallower one fused with
    the fused map below it (nearest-resized, two sigmoid attention maps); outputs resized to the teacher's
    size; HCL: MSE plus MSE of 4x4, 2x2, 1x1 poolings (those smaller than the map) weighted 1/2, 1/4, 1/8,
    divided by the weights' sum, summed over levels."""

    def as_map(f: Tensor) -> Tensor:
        return f[:, :, None, None] if f.dim() == 2 else f

    pairs = student_teacher(term, o)
    student = [as_map(fs) for fs, _ in pairs][::-1]
    teacher = [as_map(ft) for _, ft in pairs][::-1]
    outs, residual = [], None
    for level, (x, abf) in enumerate(zip(student, term.abfs)):
        x = abf.conv1(x)
        if residual is not None:
            y = F.interpolate(residual, tuple(x.shape[2:]), mode="nearest")
            z = abf.att_conv(torch.cat([x, y], 1))
            x = x * z[:, :1] + y * z[:, 1:2]
        if x.shape[2:] != teacher[level].shape[2:]:
            x = F.interpolate(x, tuple(teacher[level].shape[2:]), mode="nearest")
        outs.append(abf.conv2(x))
        residual = x
    total = 0.0
    for fs, ft in zip(outs, teacher):
        h, w = fs.shape[2:]
        loss, weight, weights = ((fs - ft) ** 2).mean(), 1.0, 1.0
        for size in (4, 2, 1):
            if size < min(h, w):
                weight /= 2
                loss = loss + weight * ((adaptive_pool(fs, (size, size)) - adaptive_pool(ft, (size, size))) ** 2).mean()
                weights += weight
        total = total + loss / weights
    return total
