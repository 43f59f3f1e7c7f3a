#!/usr/bin/python3
"""Writes the PyTorch checkpoints the import tests read, with an independent PyTorch forward pass.

Run with Debian's interpreter and python3-torch (apt-get install python3-torch):
    /usr/bin/python3 tests/Ecmt.Engine.Tests/Fixtures/make_fixtures.py
It writes, next to this script:
    tiny_vit.pth          torch.save(state_dict) of a tiny ViT with timm's key names
    tiny_vit_wrapped.pth  {"model": state_dict, "epoch": 3}, as timm's training scripts save
    tiny_vit.json         its config in Ecmt's config.json format
    tiny_vit_check.json   fixed input images and the logits this PyTorch computes for them
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = dict(image_size=8, patch_size=4, in_channels=1, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
           num_classes=3, class_names=["a", "b", "c"], mean=[0.5], std=[0.25], layer_norm_eps=1e-6, name="tiny-pth")


class Attention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) / math.sqrt(d // self.h)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.fc1 = nn.Linear(d, f)
        self.fc2 = nn.Linear(f, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d, h, f):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, h)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = Mlp(d, f)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, c, d, p):
        super().__init__()
        self.proj = nn.Conv2d(c, d, p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Vit(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, n = cfg["embed_dim"], (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
        self.patch_embed = PatchEmbed(cfg["in_channels"], d, cfg["patch_size"])
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, n, d) * 0.5)
        self.blocks = nn.ModuleList(Block(d, cfg["num_heads"], int(d * cfg["mlp_ratio"])) for _ in range(cfg["depth"]))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg["num_classes"])

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def main():
    torch.manual_seed(20261129)
    model = Vit(CFG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.add_(torch.randn_like(p) * 0.2)
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2)
        images = torch.randn(4, 1, 8, 8)
        logits = model(images)
    sd = model.state_dict()
    torch.save(sd, os.path.join(HERE, "tiny_vit.pth"))
    torch.save({"model": sd, "epoch": 3}, os.path.join(HERE, "tiny_vit_wrapped.pth"))
    with open(os.path.join(HERE, "tiny_vit.json"), "w") as f:
        json.dump(CFG, f, indent=2)
    with open(os.path.join(HERE, "tiny_vit_check.json"), "w") as f:
        json.dump({"torch": torch.__version__, "images": images.flatten().tolist(), "logits": logits.flatten().tolist(),
                   "qkv_weight_sum": float(sd["blocks.1.attn.qkv.weight"].sum())}, f)


if __name__ == "__main__":
    main()
