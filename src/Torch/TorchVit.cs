using Ecmt.Engine.Model;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Ecmt.Torch;

// The ViT in libtorch, with timm's module names so that its state dict keys are timm's keys.
// Field names are the checkpoint names; TorchSharp registers them by reflection.
#pragma warning disable IDE1006, SA1300 // names mirror timm's checkpoint keys

sealed class PatchEmbed : Module<Tensor, Tensor>
{
    readonly Conv2d proj;

    public PatchEmbed(VitConfig c) : base(nameof(PatchEmbed))
    {
        proj = Conv2d(c.InChannels, c.EmbedDim, c.PatchSize, stride: c.PatchSize);
        RegisterComponents();
    }

    // x (B, C, H, W) -> (B, P, D)
    public override Tensor forward(Tensor x) => proj.forward(x).flatten(2).transpose(1, 2);
}

sealed class Attention : Module<Tensor, Tensor>
{
    readonly Linear qkv, proj;
    readonly int heads;
    readonly double scale;

    public Attention(VitConfig c) : base(nameof(Attention))
    {
        heads = c.NumHeads;
        scale = 1.0 / Math.Sqrt(c.HeadDim);
        qkv = Linear(c.EmbedDim, 3 * c.EmbedDim);
        proj = Linear(c.EmbedDim, c.EmbedDim);
        RegisterComponents();
    }

    // x (B, N, D) -> (B, N, D)
    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0], n = x.shape[1], d = x.shape[2];
        using var parts = qkv.forward(x).reshape(b, n, 3, heads, d / heads).permute(2, 0, 3, 1, 4);
        using var q = parts[0];
        using var k = parts[1];
        using var v = parts[2];
        using var scores = q.matmul(k.transpose(-2, -1)).mul_(scale);
        using var attn = scores.softmax(-1);
        using var o = attn.matmul(v).transpose(1, 2).reshape(b, n, d);
        return proj.forward(o);
    }
}

sealed class Mlp : Module<Tensor, Tensor>
{
    readonly Linear fc1, fc2;

    public Mlp(VitConfig c) : base(nameof(Mlp))
    {
        fc1 = Linear(c.EmbedDim, c.MlpDim);
        fc2 = Linear(c.MlpDim, c.EmbedDim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h = fc1.forward(x);
        using var g = functional.gelu(h);
        return fc2.forward(g);
    }
}

sealed class Block : Module<Tensor, Tensor>
{
    readonly LayerNorm norm1, norm2;
    readonly Attention attn;
    readonly Mlp mlp;

    public Block(VitConfig c) : base(nameof(Block))
    {
        norm1 = LayerNorm(c.EmbedDim, eps: c.LayerNormEps);
        attn = new Attention(c);
        norm2 = LayerNorm(c.EmbedDim, eps: c.LayerNormEps);
        mlp = new Mlp(c);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var a = attn.forward(norm1.forward(x));
        using var y = x + a;
        using var m = mlp.forward(norm2.forward(y));
        return y + m;
    }
}

/// <summary>The ANN ViT in libtorch: the training model, and the independent oracle the C# reference is tested against.</summary>
public sealed class TorchVit : Module<Tensor, Tensor>
{
    readonly PatchEmbed patch_embed;
    readonly Parameter cls_token, pos_embed;
    readonly ModuleList<Block> blocks;
    readonly LayerNorm norm;
    readonly Linear head;

    static string LoadTorch(string name)
    {
        TorchRuntime.EnsureLoaded();
        return name;
    }

    // libtorch must be loadable before Module's constructor touches it, so the fix runs in the base call's argument.
    public TorchVit(VitConfig config) : base(LoadTorch(nameof(TorchVit)))
    {
        Config = config;
        patch_embed = new PatchEmbed(config);
        cls_token = Parameter(zeros(1, 1, config.EmbedDim));
        pos_embed = Parameter(zeros(1, config.Tokens, config.EmbedDim));
        blocks = new ModuleList<Block>(Enumerable.Range(0, config.Depth).Select(_ => new Block(config)).ToArray());
        norm = LayerNorm(config.EmbedDim, eps: config.LayerNormEps);
        head = Linear(config.EmbedDim, config.NumClasses);
        RegisterComponents();
        // Linear and conv layers keep libtorch's default (Kaiming-uniform) initialisation: timm's std-0.02 normal is
        // tuned for width 768 and leaves a width-64 model's residual branches so weak that it trains several times slower.
        using (no_grad())
        {
            init.trunc_normal_(cls_token, std: 0.02);
            init.trunc_normal_(pos_embed, std: 0.02);
        }
    }

    public VitConfig Config { get; }

    // x (B, C, H, W) normalised images -> logits (B, classes)
    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0];
        using var patches = patch_embed.forward(x);
        using var cls = cls_token.expand(b, -1, -1);
        var h = cat([cls, patches], 1).add_(pos_embed);
        foreach (var block in blocks)
        {
            var next = block.forward(h);
            h.Dispose();
            h = next;
        }
        using (h)
        using (var normed = norm.forward(h))
        using (var clsOut = normed.select(1, 0))
            return head.forward(clsOut);
    }

    /// <summary>Copies weights in (names are timm's keys on both sides).</summary>
    public void LoadWeights(VitWeights weights)
    {
        using var _ = no_grad();
        foreach (var (name, p) in named_parameters())
        {
            var source = weights.Tensors[name];
            using var t = TensorConvert.ToTorch(source);
            p.copy_(t);
        }
    }

    public VitWeights ExportWeights()
    {
        var tensors = named_parameters().ToDictionary(p => p.name, p => TensorConvert.ToDense(p.parameter), StringComparer.Ordinal);
        return VitWeights.Bind(Config, tensors);
    }
}

public static class TensorConvert
{
    public static Tensor ToTorch(DenseTensor t) => tensor(t.Data, t.Shape.Select(s => (long)s).ToArray());

    public static DenseTensor ToDense(Tensor t)
    {
        using var c = t.detach().to(ScalarType.Float32).contiguous().cpu();
        return new DenseTensor(c.shape.Select(s => checked((int)s)).ToArray(), c.data<float>().ToArray());
    }
}
