using System.Runtime.InteropServices;
using TorchSharp;

namespace Ecmt.Torch;

/// <summary>
/// Makes TorchSharp loadable before its first use. TorchSharp 0.107's <c>libLibTorchSharp.so</c> was linked
/// against GCC 13's libstdc++ and records a need for version GLIBCXX_3.4.32, which older systems (Debian 12 has
/// 3.4.30) lack; the dynamic loader then refuses the library. The symbol behind that need
/// (<c>std::ios_base_library_init()</c>) is only referenced to pin the version, never called, so marking the
/// need weak is enough. This runs only where the loaded libstdc++ really lacks a version a TorchSharp native
/// library needs; elsewhere it changes nothing.
/// </summary>
public static class TorchRuntime
{
    static readonly Lock Gate = new();
    static bool _ready;

    /// <summary>
    /// Call before any TorchSharp API. Idempotent and thread-safe. <paramref name="threads"/> sets libtorch's
    /// thread count (the first call without it sets one per core).
    /// </summary>
    public static void EnsureLoaded(int? threads = null)
    {
        lock (Gate)
        {
            if (!_ready)
            {
                if (OperatingSystem.IsLinux()) WeakenMissingLibStdCxxVersions();
                torch.set_num_threads(threads ?? Environment.ProcessorCount);
                _ready = true;
            }
            else if (threads is int n)
            {
                torch.set_num_threads(n);
            }
        }
    }

    /// <summary>The libstdc++ this process uses, found through /proc/self/maps after loading it.</summary>
    static string? LoadedLibStdCxx()
    {
        NativeLibrary.TryLoad("libstdc++.so.6", out _);
        return File.ReadLines("/proc/self/maps")
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(p => p.Length >= 6 && p[5].Contains("libstdc++.so", StringComparison.Ordinal))
            .Select(p => p[5])
            .FirstOrDefault();
    }

    static void WeakenMissingLibStdCxxVersions()
    {
        var stdcxx = LoadedLibStdCxx();
        if (stdcxx is null) return;
        var provided = ElfVersionNeeds.DefinedVersions(stdcxx);
        foreach (var library in TorchSharpNativeLibraries())
        {
            var missing = ElfVersionNeeds.NeededVersions(library)
                .Where(n => n.File.StartsWith("libstdc++.so", StringComparison.Ordinal) && !n.IsWeak && !provided.Contains(n.Version))
                .ToList();
            if (missing.Count == 0) continue;
            string temp = $"{library}.{Environment.ProcessId}.tmp";
            try
            {
                ElfVersionNeeds.WriteWithWeakNeeds(library, temp, missing);
                File.Move(temp, library, overwrite: true);
            }
            catch (UnauthorizedAccessException e)
            {
                File.Delete(temp);
                throw new InvalidOperationException(
                    $"{library} needs {string.Join(", ", missing.Select(m => m.Version))} which {stdcxx} lacks, and the file cannot be patched here ({e.Message}). " +
                    "Run once as a user who can write the program's folder, or use a system with GCC 13's libstdc++ or newer.", e);
            }
            Console.Error.WriteLine($"ecmt: marked {string.Join(", ", missing.Select(m => m.Version))} weak in {Path.GetFileName(library)} ({stdcxx} lacks it)");
        }
    }

    static IEnumerable<string> TorchSharpNativeLibraries()
    {
        string baseDir = AppContext.BaseDirectory;
        var folders = new[] { Path.Combine(baseDir, "runtimes", "linux-x64", "native"), baseDir };
        return folders.Where(Directory.Exists)
            .SelectMany(d => Directory.EnumerateFiles(d, "libLibTorchSharp.so*"))
            .Where(p => !p.EndsWith(".tmp", StringComparison.Ordinal))
            .Distinct();
    }
}
