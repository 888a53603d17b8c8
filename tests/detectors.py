"""Small object detectors written for the tests in plain torch (torchvision is no dependency of
the project): a residual backbone, a feature pyramid, RetinaNet-, FCOS-, SSD- and Faster
R-CNN-style heads, anchors, box decoding, score thresholds, top-k over candidates and
non-maximum suppression, as torchvision's detectors compute them in eval mode.

NMS comes in two forms: written in torch ops (``nms_reference``: a greedy pass over the
candidates sorted by score), and as a custom op with a CPU kernel and a fake kernel whose output
size is the data's (``dxtest::nms``, the way ``torchvision.ops.nms`` is registered). So do the
box features of the two-stage detector: sampled with ``grid_sample``, or by a custom op
(``dxtest::roi_align``, as ``torchvision.ops.roi_align``). The library's rules for
torchvision's ops are registered for the custom ones here.

A detector returns one dict of detections (``boxes``, ``scores``, ``labels``) per image; with
``with_raw = True`` it returns ``(raw, detections)``, ``raw`` holding what its heads computed
before post-processing (classification logits and box regressions), for the oracle."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import depgraph_ext as dx
from depgraph_ext.graph.rules.detection import roi_pool
from depgraph_ext.graph.rules.indexing import read_as_data


# -- boxes and NMS ------------------------------------------------------------------------------
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS in torch ops: indices of the kept boxes, by decreasing score."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    suppress = (box_iou(boxes, boxes) > iou_threshold).triu(1)
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for i in range(boxes.shape[0]):  # as many steps as candidates: the data's count
        keep &= ~(suppress[i] & keep[i])
    return order[keep]


@torch.library.custom_op("dxtest::nms", mutates_args=())
def nms_op(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms_reference(boxes, scores, iou_threshold)


@nms_op.register_fake
def _nms_fake(boxes, scores, iou_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


NMS = {"op": nms_op, "torch": nms_reference}
dx.register_rule("dxtest.nms", read_as_data)  # torchvision.nms's rule


def batched_nms(boxes, scores, idxs, iou_threshold: float, nms) -> torch.Tensor:
    """NMS within each class (torchvision's coordinate trick: classes' boxes moved apart)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Box regressions (dx, dy, dw, dh) applied to anchors (x0, y0, x1, y1)."""
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
    dx, dy, dw, dh = deltas.unbind(-1)
    clip = math.log(1000.0 / 16)
    pw, ph = torch.exp(dw.clamp(max=clip)) * w, torch.exp(dh.clamp(max=clip)) * h
    px, py = dx * w + cx, dy * h + cy
    return torch.stack((px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph), dim=-1)


def anchors_for(feature: torch.Tensor, stride: int, sizes, ratios) -> torch.Tensor:
    """[H * W * A, 4] anchors of one level, A = len(sizes) * len(ratios) per location."""
    base = []
    for s in sizes:
        for r in ratios:
            w, h = s * math.sqrt(r), s / math.sqrt(r)
            base.append([-w / 2, -h / 2, w / 2, h / 2])
    base = torch.tensor(base, dtype=feature.dtype, device=feature.device)
    h, w = feature.shape[-2:]
    ys = (torch.arange(h, dtype=feature.dtype, device=feature.device) + 0.5) * stride
    xs = (torch.arange(w, dtype=feature.dtype, device=feature.device) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
    return (centres + base[None]).reshape(-1, 4)


# -- backbone and feature pyramid ---------------------------------------------------------------
class ConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )


class Block(nn.Module):
    """A residual block: the stream's channels are one group with everything that adds to it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = ConvBN(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.b(self.a(x)))


class Backbone(nn.Module):
    """Strides 4, 8, 16 (C3, C4, C5)."""

    def __init__(self, widths=(8, 12, 16)) -> None:
        super().__init__()
        self.stem = ConvBN(3, widths[0], 2)
        self.stages = nn.ModuleList()
        c = widths[0]
        for w in widths:
            self.stages.append(nn.Sequential(ConvBN(c, w, 2), Block(w)))
            c = w
        self.widths = widths

    def forward(self, x):
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class FPN(nn.Module):
    """Lateral 1x1 convs, a top-down pathway (nearest upsampling), 3x3 output convs, and one
    extra level by a strided conv: every level has ``channels`` channels (one group)."""

    def __init__(self, widths, channels: int = 8) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in widths)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, 1, 1) for _ in widths)
        self.extra = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, features):
        inner = self.lateral[-1](features[-1])
        results = [self.output[-1](inner)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.output[i](inner))
        results.append(self.extra(F.relu(results[-1])))
        return results


# -- one-stage heads -----------------------------------------------------------------------------
def tower(channels: int, depth: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers.append(nn.Conv2d(channels, channels, 3, 1, 1))
        if norm:
            layers.append(nn.GroupNorm(4, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def per_location(x: torch.Tensor, anchors: int, values: int) -> torch.Tensor:
    """[N, A * V, H, W] -> [N, H * W * A, V] (the view fixes A and V: the code says them)."""
    n, _, h, w = x.shape
    return x.view(n, anchors, values, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values)


class RetinaHead(nn.Module):
    """Shared towers over every level; ``norm``: FCOS's GroupNorm towers and a centerness."""

    def __init__(self, channels: int, anchors: int, classes: int, norm: bool = False) -> None:
        super().__init__()
        self.anchors, self.classes, self.norm = anchors, classes, norm
        self.cls_tower = tower(channels, 2, norm)
        self.reg_tower = tower(channels, 2, norm)
        self.cls_logits = nn.Conv2d(channels, anchors * classes, 3, 1, 1)
        self.bbox_reg = nn.Conv2d(channels, anchors * 4, 3, 1, 1)
        self.ctrness = nn.Conv2d(channels, anchors, 3, 1, 1) if norm else None

    def forward(self, features):
        logits, regressions, ctrness = [], [], []
        for f in features:
            c, r = self.cls_tower(f), self.reg_tower(f)
            logits.append(per_location(self.cls_logits(c), self.anchors, self.classes))
            regressions.append(per_location(self.bbox_reg(r), self.anchors, 4))
            if self.ctrness is not None:
                ctrness.append(per_location(self.ctrness(r), self.anchors, 1))
        raw = {"cls_logits": torch.cat(logits, 1), "bbox_regression": torch.cat(regressions, 1)}
        if ctrness:
            raw["bbox_ctrness"] = torch.cat(ctrness, 1)
        return raw


class SSDHead(nn.Module):
    """A separate (depthwise-separable) predictor per level, with its own anchor count."""

    def __init__(self, channels: int, anchors: list[int], classes: int) -> None:
        super().__init__()
        self.anchors, self.classes = anchors, classes

        def predictor(out: int) -> nn.Sequential:
            return nn.Sequential(
                ConvBN(channels, channels, groups=channels), nn.Conv2d(channels, out, 1)
            )

        self.cls = nn.ModuleList(predictor(a * classes) for a in anchors)
        self.reg = nn.ModuleList(predictor(a * 4) for a in anchors)

    def forward(self, features):
        logits = [
            per_location(head(f), a, self.classes)
            for head, f, a in zip(self.cls, features, self.anchors)
        ]
        regressions = [
            per_location(head(f), a, 4) for head, f, a in zip(self.reg, features, self.anchors)
        ]
        return {"cls_logits": torch.cat(logits, 1), "bbox_regression": torch.cat(regressions, 1)}


class OneStage(nn.Module):
    """RetinaNet (``kind="retinanet"``), FCOS (GroupNorm towers, one anchor per location and a
    centerness) or SSD (``kind="ssd"``: per-level predictors, softmax over classes with a
    background class)."""

    def __init__(
        self,
        kind: str = "retinanet",
        classes: int = 3,
        nms: str = "op",
        score_thresh: float = 0.05,
        topk_candidates: int = 20,
        detections: int = 10,
        channels: int = 8,
    ) -> None:
        super().__init__()
        self.kind, self.classes, self.nms_kind = kind, classes, nms
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.detections, self.with_raw = detections, False
        self.backbone = Backbone()
        self.fpn = FPN(self.backbone.widths, channels)
        self.strides = [4, 8, 16, 32]
        if kind == "ssd":
            self.anchor_counts = [2, 3, 3, 2]  # per level, as SSD's aspect ratios say
            self.head = SSDHead(channels, self.anchor_counts, classes + 1)
        else:
            a = 1 if kind == "fcos" else 3
            self.anchor_counts = [a] * 4
            self.head = RetinaHead(channels, a, classes, norm=kind == "fcos")

    def anchors(self, features):
        out = []
        for f, stride, a in zip(features, self.strides, self.anchor_counts):
            out.append(anchors_for(f, stride, [2.0 * stride], [1.0, 0.5, 2.0][:a]))
        return out

    def forward(self, images: list[torch.Tensor]):
        x = torch.stack(images)
        size = tuple(x.shape[-2:])
        features = self.fpn(self.backbone(x))
        raw = self.head(features)
        anchors = self.anchors(features)
        counts = [a.shape[0] for a in anchors]
        detections = []
        for i in range(x.shape[0]):
            per_level = [
                raw["cls_logits"][i].split(counts),
                raw["bbox_regression"][i].split(counts),
            ]
            if "bbox_ctrness" in raw:
                per_level.append(raw["bbox_ctrness"][i].split(counts))
            detections.append(self.postprocess(per_level, anchors, size))
        return (raw, detections) if self.with_raw else detections

    def postprocess(self, per_level, anchors, size):
        boxes_all, scores_all, labels_all = [], [], []
        for level, level_anchors in enumerate(anchors):
            logits, deltas = per_level[0][level], per_level[1][level]
            if self.kind == "ssd":  # softmax with a background class, then class by class
                probs = F.softmax(logits, -1)
                boxes = clip_boxes(decode(deltas, level_anchors), size)
                for label in range(1, probs.shape[1]):
                    score = probs[:, label]
                    keep = score > self.score_thresh
                    score, box = score[keep], boxes[keep]
                    k = min(self.topk_candidates, score.size(0))
                    score, idxs = score.topk(k)
                    boxes_all.append(box[idxs])
                    scores_all.append(score)
                    labels_all.append(torch.full_like(score, label, dtype=torch.int64))
                continue
            scores = torch.sigmoid(logits)
            if len(per_level) > 2:  # FCOS: classification times centerness
                scores = torch.sqrt(scores * torch.sigmoid(per_level[2][level]))
            scores = scores.flatten()
            keep = scores > self.score_thresh
            scores = scores[keep]
            candidates = torch.where(keep)[0]
            k = min(self.topk_candidates, candidates.size(0))
            scores, idxs = scores.topk(k)
            candidates = candidates[idxs]
            anchor_idxs = torch.div(candidates, self.classes, rounding_mode="floor")
            labels = candidates % self.classes
            boxes = decode(deltas[anchor_idxs], level_anchors[anchor_idxs])
            boxes_all.append(clip_boxes(boxes, size))
            scores_all.append(scores)
            labels_all.append(labels)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(boxes, scores, labels, 0.5, NMS[self.nms_kind])[: self.detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


# -- two-stage: a region proposal network and a box head -----------------------------------------
def roi_features(feature: torch.Tensor, boxes: torch.Tensor, size, out: int = 4) -> torch.Tensor:
    """[K, C, out, out] features of K boxes on one image's [1, C, H, W] feature map, sampled
    bilinearly on a grid over each box (RoIAlign's job, written with grid_sample)."""
    h, w = size
    x0, y0, x1, y1 = (boxes / boxes.new_tensor([w, h, w, h]) * 2 - 1).unbind(1)
    zero = torch.zeros_like(x0)
    theta = torch.stack(
        (
            torch.stack(((x1 - x0) / 2, zero, (x0 + x1) / 2), 1),
            torch.stack((zero, (y1 - y0) / 2, (y0 + y1) / 2), 1),
        ),
        1,
    )
    grid = F.affine_grid(theta, [boxes.shape[0], 1, out, out], align_corners=False)
    return F.grid_sample(feature.expand(boxes.shape[0], -1, -1, -1), grid, align_corners=False)


@torch.library.custom_op("dxtest::roi_align", mutates_args=())
def roi_align_op(
    feature: torch.Tensor, rois: torch.Tensor, height: int, width: int, out: int
) -> torch.Tensor:
    """torchvision.ops.roi_align's signature in short: rois [K, 5] (image index, box)."""
    return torch.cat(
        [
            roi_features(feature[int(r[0]) : int(r[0]) + 1], r[None, 1:], (height, width), out)
            for r in rois
        ]
        + [feature.new_zeros((0, feature.shape[1], out, out))]
    )


@roi_align_op.register_fake
def _roi_align_fake(feature, rois, height, width, out):
    return feature.new_empty((rois.shape[0], feature.shape[1], out, out))


dx.register_rule("dxtest.roi_align", roi_pool)  # torchvision.roi_align's rule


class RPN(nn.Module):
    def __init__(self, channels: int, anchors: int = 3) -> None:
        super().__init__()
        self.anchors = anchors
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.objectness = nn.Conv2d(channels, anchors, 1)
        self.deltas = nn.Conv2d(channels, anchors * 4, 1)

    def forward(self, features):
        objectness, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            objectness.append(per_location(self.objectness(t), self.anchors, 1).flatten(1))
            deltas.append(per_location(self.deltas(t), self.anchors, 4))
        return torch.cat(objectness, 1), torch.cat(deltas, 1)


class TwoStage(nn.Module):
    """Faster R-CNN: RPN proposals (top-k per level, small and low-scoring boxes removed, NMS per
    level, the best kept), box features sampled from the finest level, an MLP box head, and
    detections class by class (softmax with a background class, threshold, NMS)."""

    def __init__(
        self,
        classes: int = 3,
        nms: str = "op",
        score_thresh: float = 0.05,
        pre_nms: int = 30,
        post_nms: int = 12,
        detections: int = 10,
        channels: int = 8,
        hidden: int = 16,
        roi: str = "grid",
        fixed_view: bool = False,
    ) -> None:
        super().__init__()
        self.classes, self.nms_kind, self.score_thresh = classes, nms, score_thresh
        # the width the code was written for, as a shape of its own (a bare integer attribute
        # given to a reshape would follow the plan)
        self.roi, self.box_shape = roi, (-1, channels * 16) if fixed_view else None
        self.pre_nms, self.post_nms, self.detections = pre_nms, post_nms, detections
        self.with_raw = False
        self.backbone = Backbone()
        self.fpn = FPN(self.backbone.widths, channels)
        self.rpn = RPN(channels)
        self.strides = [4, 8, 16, 32]
        self.fc6 = nn.Linear(channels * 16, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, classes + 1)
        self.bbox_pred = nn.Linear(hidden, (classes + 1) * 4)

    def proposals(self, objectness, deltas, anchors, size):
        counts = [a.shape[0] for a in anchors]
        boxes_all, scores_all, levels_all = [], [], []
        for level, (ob, d, a) in enumerate(
            zip(objectness.split(counts), deltas.split(counts), anchors)
        ):
            ob, idx = ob.topk(min(self.pre_nms, ob.shape[0]))
            boxes_all.append(clip_boxes(decode(d[idx], a[idx]), size))
            scores_all.append(torch.sigmoid(ob))
            levels_all.append(torch.full((idx.shape[0],), level, dtype=torch.int64))
        boxes, scores, levels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(levels_all)
        keep = remove_small_boxes(boxes, 1.0)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = torch.where(scores >= 0.0)[0]
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, 0.7, NMS[self.nms_kind])[: self.post_nms]
        return boxes[keep]

    def forward(self, images: list[torch.Tensor]):
        x = torch.stack(images)
        size = tuple(x.shape[-2:])
        features = self.fpn(self.backbone(x))
        objectness, deltas = self.rpn(features)
        anchors = [
            anchors_for(f, s, [2.0 * s], [1.0, 0.5, 2.0]) for f, s in zip(features, self.strides)
        ]
        raw = {
            "objectness": objectness,
            "rpn_deltas": deltas,
            "cls_logits": [],
            "bbox_regression": [],
        }
        detections = []
        for i in range(x.shape[0]):
            proposals = self.proposals(objectness[i], deltas[i], anchors, size)
            if self.roi == "op":
                index = proposals.new_full((proposals.shape[0], 1), float(i))
                rois = roi_align_op(features[0], torch.cat((index, proposals), 1), *size, 4)
            else:
                rois = roi_features(features[0][i : i + 1], proposals, size)
            if self.box_shape is not None:  # a fixed size
                rois = rois.reshape(self.box_shape)
            h = F.relu(self.fc7(F.relu(self.fc6(rois.flatten(1)))))
            logits, regressions = self.cls_score(h), self.bbox_pred(h)
            raw["cls_logits"].append(logits)
            raw["bbox_regression"].append(regressions)
            detections.append(self.postprocess(logits, regressions, proposals, size))
        return (raw, detections) if self.with_raw else detections

    def postprocess(self, logits, regressions, proposals, size):
        n, classes = logits.shape
        boxes = decode(
            regressions.reshape(-1, 4), proposals[:, None].expand(n, classes, 4).reshape(-1, 4)
        )
        boxes = clip_boxes(boxes, size).reshape(n, classes, 4)
        scores = F.softmax(logits, -1)
        labels = torch.arange(classes).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:], scores[:, 1:], labels[:, 1:]  # no background
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, 0.5, NMS[self.nms_kind])[: self.detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def build(kind: str, **options) -> nn.Module:
    """A detector with weights drawn from a fixed seed, in float64 and eval mode."""
    torch.manual_seed(0)
    model = TwoStage(**options) if kind == "fasterrcnn" else OneStage(kind, **options)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return model.double().eval()


def image(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand(
        3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
