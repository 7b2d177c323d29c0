"""A plain single-pair implementation in the style of the official PyTorch tutorial ("Neural Transfer Using PyTorch").

Loss modules inserted into a copied `nn.Sequential`, the network cut after the
last loss module, L-BFGS over the input image with the clamp inside the
closure. It uses the seed's loss formulas, layers and weights so that its
losses are comparable with the engine's; only the implementation style differs.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from stylecore.losses import gram_matrix


class Normalization(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean = mean.view(-1, 1, 1)
        self.std = std.view(-1, 1, 1)

    def forward(self, img):
        return (img - self.mean) / self.std


class ContentLoss(nn.Module):
    def __init__(self, target, weight):
        super().__init__()
        self.target = target.detach()
        self.weight = weight
        self.loss = torch.zeros(())

    def forward(self, x):
        self.loss = self.weight * (x - self.target).pow(2).sum()
        return x


class StyleLoss(nn.Module):
    def __init__(self, target_feature, weight):
        super().__init__()
        self.target = gram_matrix(target_feature).detach()
        self.weight = weight
        self.loss = torch.zeros(())

    def forward(self, x):
        self.loss = self.weight * (gram_matrix(x) - self.target).pow(2).sum()
        return x


def build(features: nn.Sequential, layer_names, mean, std, content_img, style_img, content_layer, style_layers, content_weight, style_weights):
    """The tutorial's get_style_model_and_losses, keyed by our layer names."""
    model = nn.Sequential(Normalization(mean, std))
    plain = nn.Sequential(Normalization(mean, std))  # the same layers without loss modules, for the targets
    content_losses, style_losses = [], []
    last = max(layer_names.index(n) for n in (content_layer, *style_layers))
    for index, layer in enumerate(features):
        if index > last:
            break
        if isinstance(layer, nn.ReLU):
            layer = nn.ReLU(inplace=False)
        name = layer_names[index]
        model.add_module(name, layer)
        plain.add_module(name, layer)
        if name == content_layer:
            loss = ContentLoss(plain(content_img).detach(), content_weight)
            model.add_module(f"content_loss_{name}", loss)
            content_losses.append(loss)
        if name in style_layers:
            loss = StyleLoss(plain(style_img).detach(), style_weights[style_layers.index(name)])
            model.add_module(f"style_loss_{name}", loss)
            style_losses.append(loss)
    return model, content_losses, style_losses


def run(model, content_losses, style_losses, input_img, num_steps, tv_weight):
    """The tutorial's run_style_transfer loop; returns (image, per-evaluation totals, seconds)."""
    from stylecore.losses import tv_loss

    input_img = input_img.clone().requires_grad_(True)
    model.eval().requires_grad_(False)
    optimizer = torch.optim.LBFGS([input_img])
    totals, run_count = [], [0]
    began = time.perf_counter()
    while run_count[0] < num_steps:

        def closure():
            with torch.no_grad():
                input_img.clamp_(0, 1)
            optimizer.zero_grad()
            model(input_img)
            style_score = sum(sl.loss for sl in style_losses)
            content_score = sum(cl.loss for cl in content_losses)
            loss = style_score + content_score + tv_loss(input_img, tv_weight)
            loss.backward()
            run_count[0] += 1
            totals.append(loss.item())
            return loss

        optimizer.step(closure)
    seconds = time.perf_counter() - began
    with torch.no_grad():
        input_img.clamp_(0, 1)
    return input_img.detach(), totals, seconds
