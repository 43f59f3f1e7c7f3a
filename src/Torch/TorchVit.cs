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

/// <summary>BEiT's relative position bias table (R, H), one per block or one shared (module <c>rel_pos_bias</c>).</summary>
sealed class RelativePositionBias : Module
{
    readonly Parameter relative_position_bias_table;
    readonly Tensor relative_position_index;
    readonly long tokens, heads;

    public RelativePositionBias(VitConfig c) : base(nameof(RelativePositionBias))
    {
        tokens = c.Tokens;
        heads = c.NumHeads;
        relative_position_bias_table = Parameter(zeros(c.RelPosDistances, c.NumHeads));
        using (no_grad()) init.trunc_normal_(relative_position_bias_table, std: 0.02);
        relative_position_index = IndexTensor(c);
        RegisterComponents();
    }

    // -> (H, N, N), added to every image's attention logits
    public Tensor Bias() => Gather(relative_position_bias_table, relative_position_index, tokens, heads);

    /// <summary>table (R, H) read at BEiT's index (N, N) -> (H, N, N).</summary>
    public static Tensor Gather(Tensor table, Tensor index, long tokens, long heads)
    {
        using var flat = index.view(-1);
        using var rows = table.index_select(0, flat);
        using var grid = rows.view(tokens, tokens, heads);
        return grid.permute(2, 0, 1).contiguous();
    }

    /// <summary>BEiT's relative_position_index buffer (N, N), int64 as BEiT / EVA checkpoints store it.</summary>
    public static Tensor IndexTensor(VitConfig c) => tensor(RelativePosition.Index(c).Select(i => (long)i).ToArray(), [c.Tokens, c.Tokens]);

}

sealed class Attention : Module<Tensor, Tensor?, Tensor>
{
    readonly Linear qkv, proj;
    readonly Parameter? q_bias, v_bias;
    readonly Parameter? relative_position_bias_table;
    readonly Tensor? relative_position_index;
    readonly int heads;
    readonly long tokens;
    readonly double scale;

    public Attention(VitConfig c) : base(nameof(Attention))
    {
        heads = c.NumHeads;
        scale = 1.0 / Math.Sqrt(c.HeadDim);
        qkv = Linear(c.EmbedDim, 3 * c.EmbedDim, hasBias: c.QkvBias == QkvBias.Full);
        if (c.QkvBias == QkvBias.QV)
        {
            q_bias = Parameter(zeros(c.EmbedDim));
            v_bias = Parameter(zeros(c.EmbedDim));
        }
        proj = Linear(c.EmbedDim, c.EmbedDim);
        tokens = c.Tokens;
        if (c.RelPosBias == RelPosBias.PerBlock)
        {
            // BEiT's names: blocks.N.attn.relative_position_bias_table (a parameter), relative_position_index (a buffer)
            relative_position_bias_table = Parameter(zeros(c.RelPosDistances, c.NumHeads));
            using (no_grad()) init.trunc_normal_(relative_position_bias_table, std: 0.02);
            relative_position_index = RelativePositionBias.IndexTensor(c);
        }
        RegisterComponents();
    }

    // x (B, N, D), shared relative position bias (H, N, N) or null -> (B, N, D)
    public override Tensor forward(Tensor x, Tensor? sharedBias)
    {
        long b = x.shape[0], n = x.shape[1], d = x.shape[2];
        using var scope = NewDisposeScope();
        var bias = q_bias is null ? null : cat([q_bias, zeros_like(q_bias), v_bias!]);
        var parts = functional.linear(x, qkv.weight!, bias ?? qkv.bias).reshape(b, n, 3, heads, d / heads).permute(2, 0, 3, 1, 4);
        var q = parts[0];
        var k = parts[1];
        var v = parts[2];
        var scores = q.matmul(k.transpose(-2, -1)).mul_(scale);
        if (relative_position_bias_table is not null)
            scores = scores + RelativePositionBias.Gather(relative_position_bias_table, relative_position_index!, tokens, heads);
        if (sharedBias is not null) scores = scores + sharedBias;
        var attn = scores.softmax(-1);
        var o = attn.matmul(v).transpose(1, 2).reshape(b, n, d);
        return proj.forward(o).MoveToOuterDisposeScope();
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

/// <summary>timm's LayerScale module: one parameter <c>gamma</c> (D).</summary>
sealed class LayerScaleModule : Module<Tensor, Tensor>
{
    readonly Parameter gamma;

    public LayerScaleModule(int dim, double init) : base(nameof(LayerScaleModule))
    {
        gamma = Parameter(full(dim, init));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x * gamma;
}

sealed class Block : Module<Tensor, Tensor?, Tensor>
{
    /// <summary>Initial layer-scale value (BEiT's fine-tuning default for base models).</summary>
    public const double LayerScaleInit = 0.1;

    readonly LayerNorm norm1, norm2;
    readonly Attention attn;
    readonly Mlp mlp;
    readonly Parameter? gamma_1, gamma_2;
    readonly LayerScaleModule? ls1, ls2;
    readonly bool postNorm;

    public Block(VitConfig c) : base(nameof(Block))
    {
        postNorm = c.PostNorm;
        norm1 = LayerNorm(c.EmbedDim, eps: c.LayerNormEps);
        attn = new Attention(c);
        norm2 = LayerNorm(c.EmbedDim, eps: c.LayerNormEps);
        mlp = new Mlp(c);
        if (c.LayerScale == LayerScale.Gamma)
        {
            gamma_1 = Parameter(full(c.EmbedDim, LayerScaleInit));
            gamma_2 = Parameter(full(c.EmbedDim, LayerScaleInit));
        }
        else if (c.LayerScale == LayerScale.Timm)
        {
            ls1 = new LayerScaleModule(c.EmbedDim, LayerScaleInit);
            ls2 = new LayerScaleModule(c.EmbedDim, LayerScaleInit);
        }
        RegisterComponents();
    }

    Tensor Scale(Tensor x, int branch) => (branch == 1 ? (gamma_1, ls1) : (gamma_2, ls2)) switch
    {
        (Parameter g, _) => x * g,
        (_, LayerScaleModule ls) => ls.forward(x),
        _ => x.alias(),
    };

    // x (B, N, D), shared relative position bias (H, N, N) or null -> (B, N, D)
    public override Tensor forward(Tensor x, Tensor? sharedBias)
    {
        using var scope = NewDisposeScope();
        var a = postNorm ? norm1.forward(attn.forward(x, sharedBias)) : attn.forward(norm1.forward(x), sharedBias);
        var y = x + Scale(a, 1);
        var m = postNorm ? norm2.forward(mlp.forward(y)) : mlp.forward(norm2.forward(y));
        return (y + Scale(m, 2)).MoveToOuterDisposeScope();
    }
}

/// <summary>The ANN ViT in libtorch: the training model, and the independent oracle the C# reference is tested against.</summary>
public sealed class TorchVit : Module<Tensor, Tensor>
{
    readonly PatchEmbed patch_embed;
    readonly Parameter cls_token;
    readonly Parameter? pos_embed;
    readonly RelativePositionBias? rel_pos_bias;
    readonly ModuleList<Block> blocks;
    readonly LayerNorm? norm, fc_norm;
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
        if (config.AbsPosEmbed) pos_embed = Parameter(zeros(1, config.Tokens, config.EmbedDim));
        if (config.RelPosBias == RelPosBias.Shared) rel_pos_bias = new RelativePositionBias(config);
        blocks = new ModuleList<Block>(Enumerable.Range(0, config.Depth).Select(_ => new Block(config)).ToArray());
        if (config.Pooling == Pooling.Mean) fc_norm = LayerNorm(config.EmbedDim, eps: config.LayerNormEps);
        else norm = LayerNorm(config.EmbedDim, eps: config.LayerNormEps);
        head = Linear(config.EmbedDim, config.NumClasses);
        RegisterComponents();
        // Linear and conv layers keep libtorch's default (Kaiming-uniform) initialisation: timm's std-0.02 normal is
        // tuned for width 768 and leaves a width-64 model's residual branches so weak that it trains several times slower.
        using (no_grad())
        {
            init.trunc_normal_(cls_token, std: 0.02);
            if (pos_embed is not null) init.trunc_normal_(pos_embed, std: 0.02);
        }
    }

    public VitConfig Config { get; }

    // x (B, C, H, W) normalised images -> logits (B, classes)
    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0];
        using var scope = NewDisposeScope();
        var patches = patch_embed.forward(x);
        var cls = cls_token.expand(b, -1, -1);
        var h = cat([cls, patches], 1);
        if (pos_embed is not null) h = h + pos_embed;
        var sharedBias = rel_pos_bias?.Bias();
        foreach (var block in blocks) h = block.forward(h, sharedBias);
        // class token after the final norm, or the mean of the patch tokens then fc_norm
        var pooled = fc_norm is not null
            ? fc_norm.forward(h.narrow(1, 1, h.shape[1] - 1).mean([1]))
            : norm!.forward(h).select(1, 0);
        return head.forward(pooled).MoveToOuterDisposeScope();
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
