using System.Buffers.Binary;
using System.Text;
using Ecmt.Engine.Model;

namespace Ecmt.Engine.Tests;

public class SafeTensorsTests
{
    static byte[] FileBytes(string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)h.Length);
        h.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + h.Length);
        return bytes;
    }

    [Fact]
    public void Reads_F32_F16_and_BF16_written_by_hand()
    {
        // 1.5 and -2.0 in each type: F32 0x3FC00000 0xC0000000, F16 0x3E00 0xC000, BF16 0x3FC0 0xC000
        byte[] data = [0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x3E, 0x00, 0xC0, 0xC0, 0x3F, 0x00, 0xC0];
        var header = """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1,2],"data_offsets":[8,12]},"c":{"dtype":"BF16","shape":[2],"data_offsets":[12,16]},"__metadata__":{"format":"pt"}}""";
        var tensors = SafeTensors.Read(new MemoryStream(FileBytes(header, data)), out var metadata);
        Assert.Equal([1.5f, -2f], tensors["a"].Data);
        Assert.Equal([1.5f, -2f], tensors["b"].Data);
        Assert.Equal([1, 2], tensors["b"].Shape);
        Assert.Equal([1.5f, -2f], tensors["c"].Data);
        Assert.Equal("pt", metadata["format"]);
    }

    [Theory]
    [InlineData(StorageType.F32, 0f)]
    [InlineData(StorageType.F16, 1e-3f)]
    [InlineData(StorageType.BF16, 8e-3f)]
    public void Round_trips_within_the_precision_of_the_stored_type(StorageType type, float relativeError)
    {
        var rng = new Random(3);
        var values = Enumerable.Range(0, 300).Select(_ => (float)(rng.NextDouble() * 20 - 10)).ToArray();
        var tensors = new Dictionary<string, DenseTensor> { ["w"] = new([3, 100], values), ["b"] = new([1], [0.25f]) };
        var stream = new MemoryStream();
        SafeTensors.Write(stream, tensors, type, new Dictionary<string, string> { ["producer"] = "test" });
        // The data section starts 8-byte aligned.
        Assert.Equal(0, (int)BinaryPrimitives.ReadUInt64LittleEndian(stream.ToArray()) % 8);
        stream.Position = 0;
        var back = SafeTensors.Read(stream, out var metadata);
        Assert.Equal("test", metadata["producer"]);
        Assert.Equal([3, 100], back["w"].Shape);
        for (int i = 0; i < values.Length; i++)
            Assert.True(Math.Abs(back["w"].Data[i] - values[i]) <= relativeError * Math.Abs(values[i]), $"{type} element {i}: {back["w"].Data[i]} vs {values[i]}");
        Assert.Equal(0.25f, back["b"].Data[0]);
    }

    [Fact]
    public void BFloat16_rounds_to_nearest_even()
    {
        Assert.Equal(0x3F80, SafeTensors.ToBFloat16(1f));
        // 1 + 2^-8 lies exactly between two bfloat16 values: ties to the even one (1.0).
        Assert.Equal(0x3F80, SafeTensors.ToBFloat16(1f + MathF.Pow(2, -8)));
        // 1 + 3·2^-8 ties between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        Assert.Equal(0x3F82, SafeTensors.ToBFloat16(1f + 3 * MathF.Pow(2, -8)));
    }

    [Theory]
    [InlineData("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}""", "needs 16")]
    [InlineData("""{"a":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}}""", "unsupported dtype 'I8'")]
    [InlineData("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}""", "invalid data_offsets")]
    [InlineData("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", "truncated")]
    [InlineData("""{"a": not json""", "not valid JSON")]
    public void Rejects_corrupt_files_with_a_clear_message(string header, string message)
    {
        var e = Assert.ThrowsAny<InvalidDataException>(() => SafeTensors.Read(new MemoryStream(FileBytes(header, new byte[8])), out _));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Rejects_an_absurd_header_length()
    {
        var bytes = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, ulong.MaxValue);
        Assert.Throws<InvalidDataException>(() => SafeTensors.Read(new MemoryStream(bytes), out _));
    }
}
