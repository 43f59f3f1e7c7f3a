namespace Ecmt.Engine.Conversion;

/// <summary>λp and λn at one place of one block: one value each per group (1 for per-tensor, channels or heads for per-channel).</summary>
public sealed record PlaceThresholds(float[] Pos, float[] Neg)
{
    public int Groups => Pos.Length;
}

/// <summary>The thresholds of a whole model: [block][place].</summary>
public sealed class ModelThresholds
{
    readonly PlaceThresholds[][] _byBlock;

    public ModelThresholds(int depth)
    {
        _byBlock = Enumerable.Range(0, depth).Select(_ => new PlaceThresholds[Places.All.Length]).ToArray();
    }

    public int Depth => _byBlock.Length;

    public PlaceThresholds this[int block, Place place]
    {
        get => _byBlock[block][(int)place] ?? throw new InvalidOperationException($"no thresholds for block {block} place {place.Key()}");
        set => _byBlock[block][(int)place] = value;
    }

    public static string Key(int block, Place place, string side) => $"blocks.{block}.{place.Key()}.lambda_{side}";
}
