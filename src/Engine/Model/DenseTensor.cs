namespace Ecmt.Engine.Model;

/// <summary>A row-major float tensor in host memory: a shape and its values.</summary>
public sealed class DenseTensor
{
    public DenseTensor(int[] shape, float[] data)
    {
        long count = ElementCount(shape);
        if (count != data.Length)
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] holds {count} values, data has {data.Length}");
        Shape = shape;
        Data = data;
    }

    public DenseTensor(params int[] shape) : this(shape, new float[ElementCount(shape)]) { }

    public int[] Shape { get; }
    public float[] Data { get; }
    public int Length => Data.Length;
    public int Rank => Shape.Length;

    public static long ElementCount(IEnumerable<int> shape) => shape.Aggregate(1L, (a, b) => a * b);

    public string ShapeText => FormatShape(Shape);

    public static string FormatShape(IEnumerable<int> shape) => "[" + string.Join(", ", shape) + "]";

    public DenseTensor Clone() => new((int[])Shape.Clone(), (float[])Data.Clone());

    public override string ToString() => $"DenseTensor{ShapeText}";
}
