namespace Ecmt.Engine.Model;

/// <summary>
/// BEiT's relative position bias (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022, section 2.5
/// and its released fine-tuning code, also used by EVA): a learned table of (R, H) values, R = (2G−1)² + 3 for a G×G
/// patch grid, indexed per query/key pair. Patch tokens i, j at grid rows/columns (yᵢ, xᵢ), (yⱼ, xⱼ) read row
/// (yᵢ − yⱼ + G − 1)·(2G − 1) + (xᵢ − xⱼ + G − 1); the class token querying a patch reads row R − 3, a patch querying
/// the class token row R − 2, the class token querying itself row R − 1. Token 0 is the class token, patch p is token
/// p + 1 in row-major grid order.
/// </summary>
public static class RelativePosition
{
    /// <summary>The table row of every (query, key) token pair: (N, N), row-major.</summary>
    public static int[] Index(VitConfig c)
    {
        int g = c.GridSize, n = c.Tokens, r = c.RelPosDistances, span = 2 * g - 1;
        var index = new int[n * n];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++)
            {
                index[i * n + j] = (i, j) switch
                {
                    (0, 0) => r - 1,
                    (0, _) => r - 3,
                    (_, 0) => r - 2,
                    _ => ((i - 1) / g - (j - 1) / g + g - 1) * span + ((i - 1) % g - (j - 1) % g + g - 1),
                };
            }
        }
        return index;
    }

    /// <summary>The bias added to the attention logits: table (R, H) -> (H, N, N).</summary>
    public static DenseTensor Bias(VitConfig c, DenseTensor table)
    {
        int n = c.Tokens, heads = c.NumHeads;
        var index = Index(c);
        var bias = new DenseTensor(heads, n, n);
        for (int h = 0; h < heads; h++)
            for (int p = 0; p < n * n; p++)
                bias.Data[h * n * n + p] = table.Data[index[p] * heads + h];
        return bias;
    }
}
