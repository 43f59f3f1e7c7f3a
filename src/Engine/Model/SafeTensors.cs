using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Ecmt.Engine.Model;

/// <summary>Element types this project reads from and writes to safetensors files.</summary>
public enum StorageType { F32, F16, BF16, F64 }

/// <summary>
/// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header
/// naming every tensor's dtype, shape and byte range, then the raw little-endian data.
/// Tensors are returned as float32 whatever their stored type.
/// </summary>
public static class SafeTensors
{
    /// <summary>Headers larger than this are refused (the reference implementation uses the same bound).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    public static Dictionary<string, DenseTensor> Load(string path)
    {
        using var stream = File.OpenRead(path);
        try
        {
            return Read(stream, out _);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    public static Dictionary<string, DenseTensor> Read(Stream stream, out Dictionary<string, string> metadata)
    {
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength == 0 || headerLength > MaxHeaderBytes)
            throw new InvalidDataException($"safetensors header length {headerLength} is out of range");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);

        JsonObject header;
        try
        {
            header = JsonNode.Parse(headerBytes)?.AsObject() ?? throw new InvalidDataException("safetensors header is empty");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"safetensors header is not valid JSON: {e.Message}", e);
        }

        metadata = [];
        var entries = new List<(string Name, StorageType Type, int[] Shape, long Begin, long End)>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node!.AsObject()) metadata[k] = v?.GetValue<string>() ?? "";
                continue;
            }
            var obj = node?.AsObject() ?? throw new InvalidDataException($"tensor '{name}' has no header entry");
            var type = ParseType(obj["dtype"]?.GetValue<string>(), name);
            var shape = obj["shape"]?.AsArray().Select(s => checked((int)s!.GetValue<long>())).ToArray()
                ?? throw new InvalidDataException($"tensor '{name}' has no shape");
            var offsets = obj["data_offsets"]?.AsArray().Select(o => o!.GetValue<long>()).ToArray();
            if (offsets is not { Length: 2 } || offsets[0] < 0 || offsets[1] < offsets[0])
                throw new InvalidDataException($"tensor '{name}' has invalid data_offsets");
            long expected = DenseTensor.ElementCount(shape) * ElementSize(type);
            if (offsets[1] - offsets[0] != expected)
                throw new InvalidDataException($"tensor '{name}' has {offsets[1] - offsets[0]} bytes, shape {DenseTensor.FormatShape(shape)} of {type} needs {expected}");
            entries.Add((name, type, shape, offsets[0], offsets[1]));
        }

        long dataLength = stream.CanSeek ? stream.Length - 8 - (long)headerLength : -1;
        long end = entries.Count == 0 ? 0 : entries.Max(e => e.End);
        if (dataLength >= 0 && end > dataLength)
            throw new InvalidDataException($"safetensors data is truncated: tensors need {end} bytes, file holds {dataLength}");
        var data = new byte[end];
        stream.ReadExactly(data);

        var result = new Dictionary<string, DenseTensor>(StringComparer.Ordinal);
        foreach (var (name, type, shape, begin, stop) in entries)
            result[name] = new DenseTensor(shape, Decode(data.AsSpan((int)begin, (int)(stop - begin)), type));
        return result;
    }

    public static void Save(string path, IReadOnlyDictionary<string, DenseTensor> tensors,
        StorageType type = StorageType.F32, IReadOnlyDictionary<string, string>? metadata = null)
    {
        string temp = path + ".tmp";
        using (var stream = File.Create(temp)) Write(stream, tensors, type, metadata);
        File.Move(temp, path, overwrite: true);
    }

    public static void Write(Stream stream, IReadOnlyDictionary<string, DenseTensor> tensors,
        StorageType type = StorageType.F32, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata.OrderBy(p => p.Key, StringComparer.Ordinal)) meta[k] = v;
            header["__metadata__"] = meta;
        }
        long offset = 0;
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToArray();
        foreach (var name in names)
        {
            var t = tensors[name];
            long bytes = (long)t.Length * ElementSize(type);
            header[name] = new JsonObject
            {
                ["dtype"] = type.ToString(),
                ["shape"] = new JsonArray(t.Shape.Select(s => (JsonNode)(long)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerText = header.ToJsonString();
        // Pad the header with spaces so the data starts 8-byte aligned, as the format recommends.
        int pad = (8 - Encoding.UTF8.GetByteCount(headerText) % 8) % 8;
        var headerBytes = Encoding.UTF8.GetBytes(headerText + new string(' ', pad));
        Span<byte> lengthBytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(lengthBytes, (ulong)headerBytes.Length);
        stream.Write(lengthBytes);
        stream.Write(headerBytes);
        foreach (var name in names) stream.Write(Encode(tensors[name].Data, type));
    }

    public static int ElementSize(StorageType type) => type switch
    {
        StorageType.F32 => 4,
        StorageType.F16 or StorageType.BF16 => 2,
        StorageType.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    static StorageType ParseType(string? dtype, string name) => dtype switch
    {
        "F32" => StorageType.F32,
        "F16" => StorageType.F16,
        "BF16" => StorageType.BF16,
        "F64" => StorageType.F64,
        _ => throw new InvalidDataException($"tensor '{name}' has unsupported dtype '{dtype}' (supported: F32, F16, BF16, F64)"),
    };

    static float[] Decode(ReadOnlySpan<byte> bytes, StorageType type)
    {
        int n = bytes.Length / ElementSize(type);
        var values = new float[n];
        for (int i = 0; i < n; i++)
        {
            values[i] = type switch
            {
                StorageType.F32 => BinaryPrimitives.ReadSingleLittleEndian(bytes[(4 * i)..]),
                StorageType.F16 => (float)BinaryPrimitives.ReadHalfLittleEndian(bytes[(2 * i)..]),
                StorageType.BF16 => BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]) << 16),
                StorageType.F64 => (float)BinaryPrimitives.ReadDoubleLittleEndian(bytes[(8 * i)..]),
                _ => throw new ArgumentOutOfRangeException(nameof(type)),
            };
        }
        return values;
    }

    static byte[] Encode(float[] values, StorageType type)
    {
        var bytes = new byte[(long)values.Length * ElementSize(type)];
        var span = bytes.AsSpan();
        for (int i = 0; i < values.Length; i++)
        {
            switch (type)
            {
                case StorageType.F32: BinaryPrimitives.WriteSingleLittleEndian(span[(4 * i)..], values[i]); break;
                case StorageType.F16: BinaryPrimitives.WriteHalfLittleEndian(span[(2 * i)..], (Half)values[i]); break;
                case StorageType.BF16: BinaryPrimitives.WriteUInt16LittleEndian(span[(2 * i)..], ToBFloat16(values[i])); break;
                case StorageType.F64: BinaryPrimitives.WriteDoubleLittleEndian(span[(8 * i)..], values[i]); break;
            }
        }
        return bytes;
    }

    /// <summary>float32 → bfloat16 with round-to-nearest-even; NaN stays NaN.</summary>
    public static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }
}
