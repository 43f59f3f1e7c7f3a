using Ecmt.Engine.Conversion;
using Ecmt.Engine.Imaging;
using SkiaSharp;

namespace Ecmt.Server.Tests;

/// <summary>The image rules the proto documents: channels, transparency, crop and resize, tensor checks.</summary>
public sealed class ImageInputTests
{
    static readonly Engine.Model.VitConfig Grey = SyntheticModels.Config("grey");
    static readonly Engine.Model.VitConfig Rgb = Grey with { InChannels = 3, Mean = [0.5f, 0.5f, 0.5f], Std = [0.25f, 0.25f, 0.25f] };

    static byte[] Encode(SKBitmap bitmap, SKEncodedImageFormat format = SKEncodedImageFormat.Png)
    {
        using var data = bitmap.Encode(format, 100);
        return data.ToArray();
    }

    [Fact]
    public void A_grey_image_feeds_a_three_channel_model_as_three_equal_planes()
    {
        var intensities = TestModels.Image(4).Intensities;
        var pixels = ImageInput.Decode(TestModels.Png(4), Rgb);
        Assert.Equal(3 * 28 * 28, pixels.Length);
        for (int c = 0; c < 3; c++) Assert.Equal(intensities, pixels[(c * 784)..((c + 1) * 784)]);
    }

    [Fact]
    public void Colour_channels_stay_apart_for_an_rgb_model()
    {
        using var bitmap = new SKBitmap(new SKImageInfo(28, 28, SKColorType.Rgba8888, SKAlphaType.Opaque));
        bitmap.Erase(new SKColor(255, 0, 51));
        var pixels = ImageInput.Decode(Encode(bitmap), Rgb);
        Assert.Equal(1f, pixels[0]);
        Assert.Equal(0f, pixels[784]);
        Assert.Equal(0.2f, pixels[2 * 784], 5);
    }

    [Fact]
    public void Transparent_pixels_become_black()
    {
        using var bitmap = new SKBitmap(new SKImageInfo(28, 28, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        bitmap.Erase(new SKColor(255, 255, 255, 0));
        bitmap.SetPixel(3, 5, new SKColor(255, 255, 255, 255));
        var pixels = ImageInput.Decode(Encode(bitmap), Grey);
        Assert.Equal(0f, pixels[0]);
        Assert.Equal(1f, pixels[5 * 28 + 3]);
    }

    [Fact]
    public void The_centred_square_is_cropped_then_resized()
    {
        // 112×56: left quarter white, the rest black. The centred 56×56 square starts at x = 28 and misses the white.
        using var bitmap = new SKBitmap(new SKImageInfo(112, 56, SKColorType.Rgba8888, SKAlphaType.Opaque));
        bitmap.Erase(SKColors.Black);
        for (int y = 0; y < 56; y++)
            for (int x = 0; x < 28; x++) bitmap.SetPixel(x, y, SKColors.White);
        var pixels = ImageInput.Decode(Encode(bitmap), Grey);
        Assert.All(pixels, p => Assert.Equal(0f, p, 3));

        // 56×56 of 2×2 blocks of one grey: halving returns each block's grey.
        using var blocks = new SKBitmap(new SKImageInfo(56, 56, SKColorType.Rgba8888, SKAlphaType.Opaque));
        for (int y = 0; y < 56; y++)
            for (int x = 0; x < 56; x++)
            {
                byte v = (byte)((x / 2 * 9) % 256);
                blocks.SetPixel(x, y, new SKColor(v, v, v));
            }
        var halved = ImageInput.Decode(Encode(blocks), Grey);
        for (int x = 0; x < 28; x++) Assert.Equal(x * 9 % 256 / 255f, halved[10 * 28 + x], 2);
    }

    [Fact]
    public void Images_larger_than_the_limit_are_refused_before_decoding()
    {
        // A PNG header that claims 100000×100000 pixels: refused from the header alone.
        using var small = new SKBitmap(new SKImageInfo(1, 1, SKColorType.Gray8, SKAlphaType.Opaque));
        var png = Encode(small);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(16), 100_000);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(20), 100_000);
        uint crc = Crc32(png.AsSpan(12, 17));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), crc);
        var e = Assert.Throws<InvalidInputException>(() => ImageInput.Decode(png, Grey));
        Assert.Contains("100000×100000", e.Message, StringComparison.Ordinal);
    }

    /// <summary>PNG's chunk CRC (ISO 3309, reflected polynomial 0xEDB88320).</summary>
    internal static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320 : crc >> 1;
        }
        return ~crc;
    }
}
