using Ecmt.Engine.Conversion;
using Ecmt.Engine.Model;
using Ecmt.Kernels.Cpu;
using Ecmt.Kernels.Reference;

namespace Ecmt.Engine.Ann;

/// <summary>
/// Receives the ANN's activations at every MT-neuron place: block index, place, values and their shape
/// ((B, N, D) for fc_qkv, q, k, v and fc_out; (B, N, F) for fc1's input … see <see cref="Place"/>; (B, H, N, N) for s).
/// </summary>
public delegate void ActivationObserver(int block, Place place, ReadOnlySpan<float> values, int[] shape);

/// <summary>
/// The readable C# forward pass of the ANN ViT: the oracle for calibration, conversion and every test.
/// Matrix products go to OpenBLAS; everything else is the plain code of <see cref="ReferenceMath"/>.
/// </summary>
public sealed class ReferenceVit(VitWeights weights)
{
    public VitWeights Weights { get; } = weights;
    public VitConfig Config => Weights.Config;

    /// <summary>
    /// The input of block 0: patch embedding plus class token plus position embedding (when the model has one).
    /// images (B, C, H, W) normalised -> (B, N, D), token 0 the class token.
    /// </summary>
    public float[] Embed(ReadOnlySpan<float> images, int count)
    {
        var c = Config;
        int n = c.Tokens, d = c.EmbedDim, g = c.GridSize, p = c.PatchSize, patch = c.PatchVectorLength;
        if (images.Length != count * c.PixelsPerImage)
            throw new ArgumentException($"expected {count}×{c.InChannels}×{c.ImageSize}×{c.ImageSize} pixels, got {images.Length}");
        // patches (B·P, C·p·p) in the order of the conv weight's (C, p, p) flattening
        var patches = new float[count * c.NumPatches * patch];
        for (int b = 0; b < count; b++)
            for (int gy = 0; gy < g; gy++)
                for (int gx = 0; gx < g; gx++)
                {
                    int row = (b * c.NumPatches + gy * g + gx) * patch;
                    for (int ch = 0; ch < c.InChannels; ch++)
                        for (int py = 0; py < p; py++)
                            for (int px = 0; px < p; px++)
                                patches[row + (ch * p + py) * p + px] =
                                    images[((b * c.InChannels + ch) * c.ImageSize + gy * p + py) * c.ImageSize + gx * p + px];
                }
        var embedded = new float[count * c.NumPatches * d];
        OpenBlas.Linear(patches, count * c.NumPatches, patch, Weights.PatchEmbed.Weight.Data, Weights.PatchEmbed.Bias.Data, d, embedded);

        var x = new float[count * n * d];
        var pos = Weights.PosEmbed?.Data ?? new float[n * d];
        for (int b = 0; b < count; b++)
        {
            for (int j = 0; j < d; j++) x[b * n * d + j] = Weights.ClsToken.Data[j] + pos[j];
            for (int t = 1; t < n; t++)
                for (int j = 0; j < d; j++)
                    x[(b * n + t) * d + j] = embedded[(b * c.NumPatches + t - 1) * d + j] + pos[t * d + j];
        }
        return x;
    }

    /// <summary>logits (B, classes) for normalised images (B, C, H, W).</summary>
    public float[] Forward(ReadOnlySpan<float> images, int count, ActivationObserver? observer = null)
    {
        var c = Config;
        int n = c.Tokens, d = c.EmbedDim, f = c.MlpDim, heads = c.NumHeads, dh = c.HeadDim, rows = count * n;
        var x = Embed(images, count);
        var h = new float[rows * d];
        var qkv = new float[rows * 3 * d];
        var attnOut = new float[rows * d];
        var hidden = new float[rows * f];
        var residual = new float[rows * d];
        float scale = 1f / MathF.Sqrt(dh);

        for (int l = 0; l < c.Depth; l++)
        {
            var block = Weights.Blocks[l];
            // Pre-norm: the qkv linear reads LN1(x); post-norm: it reads x itself.
            var attnIn = c.PostNorm ? x : h;
            if (!c.PostNorm) LayerNormRows(x, block.Norm1, h, d);
            observer?.Invoke(l, Place.FcQkv, attnIn, [count, n, d]);
            OpenBlas.Linear(attnIn, rows, d, block.Qkv.Weight.Data, block.Qkv.Bias.Data, 3 * d, qkv);
            if (observer is not null)
            {
                observer(l, Place.Q, Columns(qkv, rows, 3 * d, 0, d), [count, n, d]);
                observer(l, Place.K, Columns(qkv, rows, 3 * d, d, d), [count, n, d]);
                observer(l, Place.V, Columns(qkv, rows, 3 * d, 2 * d, d), [count, n, d]);
            }
            var probs = new float[count * heads * n * n];
            var relBias = block.RelPosBias?.Data;
            for (int b = 0; b < count; b++)
            {
                for (int hd = 0; hd < heads; hd++)
                {
                    // scores (N, N) = scale · Q Kᵀ (+ the relative position bias); Q, K, V are strided (N, Dh) views into qkv (N, 3D)
                    var scores = probs.AsSpan((b * heads + hd) * n * n, n * n);
                    var qkvImage = qkv.AsSpan(b * n * 3 * d, n * 3 * d);
                    OpenBlas.Gemm(n, n, dh, qkvImage[(hd * dh)..], 3 * d, qkvImage[(d + hd * dh)..], 3 * d, transposeB: true, scores, n, alpha: scale);
                    if (relBias is not null)
                        for (int i = 0; i < n * n; i++) scores[i] += relBias[hd * n * n + i];
                    for (int i = 0; i < n; i++) ReferenceMath.Softmax(scores.Slice(i * n, n), scores.Slice(i * n, n));
                    OpenBlas.Gemm(n, dh, n, scores, n, qkvImage[(2 * d + hd * dh)..], 3 * d, transposeB: false,
                        attnOut.AsSpan(b * n * d + hd * dh), d);
                }
            }
            observer?.Invoke(l, Place.S, probs, [count, heads, n, n]);
            observer?.Invoke(l, Place.FcOut, attnOut, [count, n, d]);
            OpenBlas.Linear(attnOut, rows, d, block.Proj.Weight.Data, block.Proj.Bias.Data, d, residual);
            AddBranch(x, residual, c.PostNorm ? block.Norm1 : null, block.Gamma1, h);

            var mlpIn = c.PostNorm ? x : h;
            if (!c.PostNorm) LayerNormRows(x, block.Norm2, h, d);
            observer?.Invoke(l, Place.Fc1, mlpIn, [count, n, d]);
            OpenBlas.Linear(mlpIn, rows, d, block.Fc1.Weight.Data, block.Fc1.Bias.Data, f, hidden);
            for (int i = 0; i < hidden.Length; i++) hidden[i] = ReferenceMath.Gelu(hidden[i]);
            observer?.Invoke(l, Place.Fc2, hidden, [count, n, f]);
            OpenBlas.Linear(hidden, rows, f, block.Fc2.Weight.Data, block.Fc2.Bias.Data, d, residual);
            AddBranch(x, residual, c.PostNorm ? block.Norm2 : null, block.Gamma2, h);
        }

        // The head reads the class token (token 0) after the final LayerNorm, or the mean of the patch tokens after fc_norm.
        var pooled = new float[count * d];
        var pool = Pool(x, count);
        var finalNorm = Weights.Norm ?? Weights.FcNorm!;
        for (int b = 0; b < count; b++)
            ReferenceMath.LayerNorm(pool.AsSpan(b * d, d), finalNorm.Weight.Data, finalNorm.Bias.Data, c.LayerNormEps, pooled.AsSpan(b * d, d));
        var logits = new float[count * c.NumClasses];
        OpenBlas.Linear(pooled, count, d, Weights.Head.Weight.Data, Weights.Head.Bias.Data, c.NumClasses, logits);
        return logits;
    }

    /// <summary>x (B, N, D) -> (B, D): the class token, or the mean of the patch tokens (tokens 1..N−1).</summary>
    public float[] Pool(ReadOnlySpan<float> x, int count)
    {
        var c = Config;
        int n = c.Tokens, d = c.EmbedDim;
        var pool = new float[count * d];
        for (int b = 0; b < count; b++)
        {
            if (c.Pooling == Pooling.ClassToken)
            {
                x.Slice(b * n * d, d).CopyTo(pool.AsSpan(b * d, d));
                continue;
            }
            for (int t = 1; t < n; t++)
                for (int j = 0; j < d; j++) pool[b * d + j] += x[(b * n + t) * d + j];
            for (int j = 0; j < d; j++) pool[b * d + j] /= n - 1;
        }
        return pool;
    }

    /// <summary>x += γ ⊙ branch, the branch first layer-normed for post-norm blocks (<paramref name="scratch"/> same size as x).</summary>
    void AddBranch(float[] x, float[] branch, NormWeights? postNorm, DenseTensor? gamma, float[] scratch)
    {
        int d = Config.EmbedDim;
        if (postNorm is not null)
        {
            LayerNormRows(branch, postNorm, scratch, d);
            Array.Copy(scratch, branch, branch.Length);
        }
        if (gamma is not null)
            for (int i = 0; i < branch.Length; i++) branch[i] *= gamma.Data[i % d];
        Add(x, branch);
    }

    void LayerNormRows(float[] x, NormWeights norm, float[] y, int d)
    {
        for (int r = 0; r < x.Length / d; r++)
            ReferenceMath.LayerNorm(x.AsSpan(r * d, d), norm.Weight.Data, norm.Bias.Data, Config.LayerNormEps, y.AsSpan(r * d, d));
    }

    static void Add(float[] x, float[] y)
    {
        for (int i = 0; i < x.Length; i++) x[i] += y[i];
    }

    static float[] Columns(float[] m, int rows, int rowLength, int offset, int width)
    {
        var result = new float[rows * width];
        for (int r = 0; r < rows; r++) Array.Copy(m, r * rowLength + offset, result, r * width, width);
        return result;
    }
}
