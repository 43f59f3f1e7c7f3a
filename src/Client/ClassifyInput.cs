using Ecmt.Protos.V1;
using Google.Protobuf;

namespace Ecmt.Client;

/// <summary>
/// The image of one classification: a PNG or JPEG file (read when the call starts), encoded bytes, or pixels already
/// decoded. Bytes and tensors are copied once here, so one input can be sent by many calls, concurrently.
/// </summary>
public sealed class ClassifyInput
{
    readonly string? _path;
    readonly ByteString? _encoded;
    readonly Tensor? _tensor;

    ClassifyInput(string? path, ByteString? encoded, Tensor? tensor, string description)
    {
        _path = path;
        _encoded = encoded;
        _tensor = tensor;
        Description = description;
    }

    /// <summary>The file path, or what the input is ("PNG/JPEG, 812 bytes"; "tensor (1, 28, 28)").</summary>
    public string Description { get; }

    /// <summary>A PNG or JPEG file; the server decodes, crops and resizes it to the model's input.</summary>
    public static ClassifyInput FromFile(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return new ClassifyInput(path, null, null, path);
    }

    /// <summary>PNG or JPEG bytes.</summary>
    public static ClassifyInput FromEncoded(ReadOnlySpan<byte> image) =>
        new(null, ByteString.CopyFrom(image), null, $"PNG/JPEG, {image.Length} bytes");

    /// <summary>
    /// Decoded pixels: intensities in [0, 1], (C, H, W) row-major, equal to the model's input (ModelInfo channels,
    /// image_size, image_size). The server normalises them with the model's mean and std.
    /// </summary>
    public static ClassifyInput FromTensor(ReadOnlySpan<float> intensities, int channels, int height, int width)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(channels, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        if (intensities.Length != (long)channels * height * width)
            throw new ArgumentException($"the tensor holds {intensities.Length} values; shape ({channels}, {height}, {width}) needs {(long)channels * height * width}", nameof(intensities));
        var tensor = new Tensor();
        tensor.Shape.AddRange([(uint)channels, (uint)height, (uint)width]);
        tensor.Data.AddRange(intensities.ToArray());
        return new ClassifyInput(null, null, tensor, $"tensor ({channels}, {height}, {width})");
    }

    internal async ValueTask SetOnAsync(ClassifyRequest request, CancellationToken cancellationToken)
    {
        if (_tensor is not null) request.Tensor = _tensor;
        else if (_encoded is not null) request.Image = _encoded;
        else request.Image = ByteString.CopyFrom(await File.ReadAllBytesAsync(_path!, cancellationToken).ConfigureAwait(false));
    }

    public override string ToString() => Description;
}
