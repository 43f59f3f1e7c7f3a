using Ecmt.Engine.Model;
using SkiaSharp;

namespace Ecmt.Engine.Imaging;

/// <summary>An input image or tensor the model cannot take; the message says what is wrong and what was expected.</summary>
public sealed class InvalidInputException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Turns what a client sends into the model's input: PNG or JPEG bytes, or intensities already decoded, become
/// intensities (C, H, W) in [0, 1] of the model's channels and size; <see cref="Normalise"/> then applies the
/// model's mean and std. The server and the command-line tool share these rules (documented in the proto).
/// </summary>
public static class ImageInput
{
    /// <summary>Largest width or height accepted before decoding: bounds the memory a crafted header can ask for.</summary>
    public const int MaxDimension = 8192;
    /// <summary>Largest pixel count accepted before decoding (decoded as 4 bytes per pixel).</summary>
    public const long MaxPixels = 40_000_000;

    /// <summary>PNG or JPEG bytes -> intensities (C, H, W) in [0, 1] for <paramref name="config"/>'s input.</summary>
    public static float[] Decode(ReadOnlySpan<byte> encoded, VitConfig config)
    {
        if (encoded.IsEmpty) throw new InvalidInputException("image is empty: send PNG or JPEG bytes");
        RequireImageChannels(config);
        using var data = SKData.CreateCopy(encoded);
        using var codec = SKCodec.Create(data)
            ?? throw new InvalidInputException($"image ({encoded.Length} bytes) is not a decodable PNG or JPEG");
        if (codec.EncodedFormat is not (SKEncodedImageFormat.Png or SKEncodedImageFormat.Jpeg))
            throw new InvalidInputException($"image format {codec.EncodedFormat} is not supported: send PNG or JPEG");
        int width = codec.Info.Width, height = codec.Info.Height;
        if (width < 1 || height < 1 || width > MaxDimension || height > MaxDimension || (long)width * height > MaxPixels)
            throw new InvalidInputException($"image is {width}×{height}; at most {MaxDimension} pixels a side and {MaxPixels} pixels are accepted");

        // Premultiplied RGBA: a transparent pixel becomes black, the background of the training images.
        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul);
        using var decoded = new SKBitmap(info);
        var result = codec.GetPixels(info, decoded.GetPixels());
        if (result != SKCodecResult.Success)
            throw new InvalidInputException($"image could not be decoded: {result} (the {codec.EncodedFormat} data is corrupt or truncated)");

        int size = config.ImageSize;
        using var square = width == size && height == size ? null : CropAndResize(decoded, size);
        var rgba = (square ?? decoded).GetPixelSpan();
        return ToChannels(rgba, config.InChannels, size);
    }

    /// <summary>Checks decoded intensities sent as a tensor: shape (C, H, W) equal to the model's input, values in [0, 1].</summary>
    public static float[] FromTensor(IReadOnlyList<int> shape, ReadOnlySpan<float> data, VitConfig config)
    {
        int[] expected = [config.InChannels, config.ImageSize, config.ImageSize];
        if (shape.Count == 0) throw new InvalidInputException($"tensor.shape is missing: expected [{string.Join(", ", expected)}] (C, H, W)");
        if (!shape.SequenceEqual(expected))
            throw new InvalidInputException($"tensor.shape is [{string.Join(", ", shape)}], the model expects [{string.Join(", ", expected)}] (C, H, W)");
        if (data.Length != config.PixelsPerImage)
            throw new InvalidInputException($"tensor.data has {data.Length} values, shape [{string.Join(", ", expected)}] needs {config.PixelsPerImage}");
        for (int i = 0; i < data.Length; i++)
        {
            float v = data[i];
            if (!(v >= 0f && v <= 1f))
                throw new InvalidInputException($"tensor.data[{i}] is {v}: intensities must lie in [0, 1] (divide 8-bit pixels by 255; do not normalise)");
        }
        return data.ToArray();
    }

    /// <summary>Intensities (C, H, W) in [0, 1] -> the model's input: (x − mean) / std per channel.</summary>
    public static float[] Normalise(ReadOnlySpan<float> intensities, VitConfig config)
    {
        if (intensities.Length != config.PixelsPerImage)
            throw new ArgumentException($"expected {config.PixelsPerImage} intensities, got {intensities.Length}", nameof(intensities));
        var result = new float[intensities.Length];
        int plane = config.ImageSize * config.ImageSize;
        for (int c = 0; c < config.InChannels; c++)
        {
            float mean = config.Mean[c], invStd = 1f / config.Std[c];
            for (int p = c * plane; p < (c + 1) * plane; p++) result[p] = (intensities[p] - mean) * invStd;
        }
        return result;
    }

    /// <summary>Encodes 8-bit pixels (C, H, W), C = 1 or 3, as PNG.</summary>
    public static byte[] EncodePng(ReadOnlySpan<byte> pixels, int channels, int height, int width)
    {
        if (channels is not (1 or 3)) throw new ArgumentOutOfRangeException(nameof(channels), channels, "PNG samples have 1 or 3 channels");
        if (pixels.Length != channels * height * width) throw new ArgumentException($"expected {channels * height * width} pixels, got {pixels.Length}", nameof(pixels));
        var info = channels == 1
            ? new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque)
            : new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var bitmap = new SKBitmap(info);
        var target = bitmap.GetPixelSpan();
        int plane = height * width;
        if (channels == 1) pixels.CopyTo(target);
        else
            for (int p = 0; p < plane; p++)
            {
                target[4 * p] = pixels[p];
                target[4 * p + 1] = pixels[plane + p];
                target[4 * p + 2] = pixels[2 * plane + p];
                target[4 * p + 3] = 255;
            }
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    static void RequireImageChannels(VitConfig config)
    {
        if (config.InChannels is not (1 or 3))
            throw new InvalidInputException($"the model takes {config.InChannels} channels; images feed 1- or 3-channel models only, send a tensor");
    }

    /// <summary>The centred square of the shorter side, resized to size × size (mipmapped linear: no aliasing when shrinking).</summary>
    static SKBitmap CropAndResize(SKBitmap source, int size)
    {
        int side = Math.Min(source.Width, source.Height);
        var crop = SKRect.Create((source.Width - side) / 2, (source.Height - side) / 2, side, side);
        var target = new SKBitmap(new SKImageInfo(size, size, SKColorType.Rgba8888, SKAlphaType.Premul));
        using var canvas = new SKCanvas(target);
        canvas.Clear(SKColors.Black);
        using var image = SKImage.FromBitmap(source);
        canvas.DrawImage(image, crop, SKRect.Create(0, 0, size, size), new SKSamplingOptions(SKFilterMode.Linear, SKMipmapMode.Linear), null);
        canvas.Flush();
        return target;
    }

    /// <summary>rgba (H·W·4) premultiplied -> intensities (C, H, W): luminance (BT.601, as PIL's "L") for one channel, RGB for three.</summary>
    static float[] ToChannels(ReadOnlySpan<byte> rgba, int channels, int size)
    {
        int plane = size * size;
        var result = new float[channels * plane];
        for (int p = 0; p < plane; p++)
        {
            byte r = rgba[4 * p], g = rgba[4 * p + 1], b = rgba[4 * p + 2];
            if (channels == 1)
                // Grey pixels stay exact; colour ones take the weighted luminance.
                result[p] = (r == g && g == b ? r : 0.299f * r + 0.587f * g + 0.114f * b) / 255f;
            else
            {
                result[p] = r / 255f;
                result[plane + p] = g / 255f;
                result[2 * plane + p] = b / 255f;
            }
        }
        return result;
    }
}
