using System.Buffers.Binary;
using System.Text;

namespace Ecmt.Torch;

/// <summary>
/// Reads and edits the symbol-version sections of 64-bit little-endian ELF shared objects:
/// which versions a library defines (<c>.gnu.version_d</c>) and which versions of its dependencies it
/// needs (<c>.gnu.version_r</c>). Only the section headers and those two small sections are read.
/// </summary>
public static class ElfVersionNeeds
{
    const uint ShtGnuVerdef = 0x6ffffffd, ShtGnuVerneed = 0x6ffffffe;
    /// <summary>VER_FLG_WEAK: the loader tolerates the version being absent.</summary>
    const ushort VerFlagWeak = 0x2;

    /// <summary>One needed version: the dependency's file name, the version name, whether it is weak, and where its flags live in the file.</summary>
    public sealed record Need(string File, string Version, bool IsWeak, long FlagsOffset);

    public static IReadOnlySet<string> DefinedVersions(string path)
    {
        using var f = File.OpenRead(path);
        var result = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (section, strtab) in Sections(f, ShtGnuVerdef))
        {
            long entry = section.Offset;
            for (int i = 0; i < section.Info; i++)
            {
                var vd = ReadAt(f, entry, 20);
                ushort count = BinaryPrimitives.ReadUInt16LittleEndian(vd.AsSpan(6));
                uint auxOffset = BinaryPrimitives.ReadUInt32LittleEndian(vd.AsSpan(12));
                uint next = BinaryPrimitives.ReadUInt32LittleEndian(vd.AsSpan(16));
                if (count > 0)
                {
                    var aux = ReadAt(f, entry + auxOffset, 8);
                    result.Add(ReadString(f, strtab, BinaryPrimitives.ReadUInt32LittleEndian(aux)));
                }
                if (next == 0) break;
                entry += next;
            }
        }
        return result;
    }

    public static IReadOnlyList<Need> NeededVersions(string path)
    {
        using var f = File.OpenRead(path);
        var result = new List<Need>();
        foreach (var (section, strtab) in Sections(f, ShtGnuVerneed))
        {
            long entry = section.Offset;
            for (int i = 0; i < section.Info; i++)
            {
                var vn = ReadAt(f, entry, 16);
                ushort count = BinaryPrimitives.ReadUInt16LittleEndian(vn.AsSpan(2));
                string file = ReadString(f, strtab, BinaryPrimitives.ReadUInt32LittleEndian(vn.AsSpan(4)));
                long aux = entry + BinaryPrimitives.ReadUInt32LittleEndian(vn.AsSpan(8));
                uint next = BinaryPrimitives.ReadUInt32LittleEndian(vn.AsSpan(12));
                for (int j = 0; j < count; j++)
                {
                    var va = ReadAt(f, aux, 16);
                    ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(va.AsSpan(4));
                    string version = ReadString(f, strtab, BinaryPrimitives.ReadUInt32LittleEndian(va.AsSpan(8)));
                    result.Add(new Need(file, version, (flags & VerFlagWeak) != 0, aux + 4));
                    uint auxNext = BinaryPrimitives.ReadUInt32LittleEndian(va.AsSpan(12));
                    if (auxNext == 0) break;
                    aux += auxNext;
                }
                if (next == 0) break;
                entry += next;
            }
        }
        return result;
    }

    /// <summary>Marks the given needs weak, writing a patched copy to <paramref name="destination"/>.</summary>
    public static void WriteWithWeakNeeds(string source, string destination, IEnumerable<Need> needs)
    {
        File.Copy(source, destination, overwrite: true);
        using var f = new FileStream(destination, FileMode.Open, FileAccess.ReadWrite);
        Span<byte> flags = stackalloc byte[2];
        foreach (var need in needs)
        {
            f.Position = need.FlagsOffset;
            f.ReadExactly(flags);
            BinaryPrimitives.WriteUInt16LittleEndian(flags, (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(flags) | VerFlagWeak));
            f.Position = need.FlagsOffset;
            f.Write(flags);
        }
    }

    readonly record struct SectionHeader(uint Type, long Offset, long Size, uint Link, uint Info);

    static IEnumerable<(SectionHeader Section, SectionHeader StringTable)> Sections(FileStream f, uint type)
    {
        var ident = ReadAt(f, 0, 64);
        if (ident[0] != 0x7f || ident[1] != (byte)'E' || ident[2] != (byte)'L' || ident[3] != (byte)'F')
            throw new InvalidDataException($"{f.Name} is not an ELF file");
        if (ident[4] != 2 || ident[5] != 1)
            throw new InvalidDataException($"{f.Name} is not a 64-bit little-endian ELF file");
        long shoff = BinaryPrimitives.ReadInt64LittleEndian(ident.AsSpan(0x28));
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(ident.AsSpan(0x3A));
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(ident.AsSpan(0x3C));
        var headers = new SectionHeader[shnum];
        for (int i = 0; i < shnum; i++)
        {
            var sh = ReadAt(f, shoff + (long)i * shentsize, 64);
            headers[i] = new SectionHeader(
                BinaryPrimitives.ReadUInt32LittleEndian(sh.AsSpan(4)),
                BinaryPrimitives.ReadInt64LittleEndian(sh.AsSpan(24)),
                BinaryPrimitives.ReadInt64LittleEndian(sh.AsSpan(32)),
                BinaryPrimitives.ReadUInt32LittleEndian(sh.AsSpan(40)),
                BinaryPrimitives.ReadUInt32LittleEndian(sh.AsSpan(44)));
        }
        foreach (var h in headers)
            if (h.Type == type) yield return (h, headers[h.Link]);
    }

    static byte[] ReadAt(FileStream f, long offset, int count)
    {
        var buffer = new byte[count];
        f.Position = offset;
        f.ReadExactly(buffer);
        return buffer;
    }

    static string ReadString(FileStream f, SectionHeader strtab, uint index)
    {
        var bytes = new List<byte>();
        f.Position = strtab.Offset + index;
        for (int b; (b = f.ReadByte()) > 0;) bytes.Add((byte)b);
        return Encoding.ASCII.GetString(bytes.ToArray());
    }
}
