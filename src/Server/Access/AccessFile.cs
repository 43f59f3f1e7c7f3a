using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Options;

namespace Ecmt.Server.Access;

/// <summary>One caller of the access file: an API key (by its SHA-256) or a client certificate's subject, the models it may use, its limits.</summary>
public sealed class CallerEntry
{
    /// <summary>The caller's name (logs, rate-limit partitions).</summary>
    public string Name { get; set; } = "";
    /// <summary>SHA-256 of the API key, 64 hex digits (<c>printf %s "$KEY" | sha256sum</c>); never the key itself.</summary>
    public string? KeySha256 { get; set; }
    /// <summary>The client certificate's subject as .NET writes it (e.g. <c>CN=reporting, O=Example</c>).</summary>
    public string? CertificateSubject { get; set; }
    /// <summary>Models this caller may use; <c>"*"</c>: every model.</summary>
    public List<string> Models { get; set; } = [];
    /// <summary>Overrides Ecmt:Access:RequestsPerSecond for this caller (0: no limit).</summary>
    public int? RequestsPerSecond { get; set; }
    /// <summary>Overrides Ecmt:Access:ConcurrentStreams for this caller.</summary>
    public int? ConcurrentStreams { get; set; }

    public bool Allows(string model) => Models.Contains("*") || Models.Contains(model);
}

/// <summary>The access file's content: <c>{"callers": [{"name", "key_sha256" | "certificate_subject", "models", ...}]}</c>.</summary>
public sealed class AccessList
{
    public List<CallerEntry> Callers { get; set; } = [];

    /// <summary>Hashes parsed once (32 bytes each); index-aligned with <see cref="Callers"/>, null for certificate entries.</summary>
    [JsonIgnore] internal byte[]?[] Hashes { get; private set; } = [];

    internal static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    /// <summary>Parses and checks the file's text; a mistake is an <see cref="InvalidOperationException"/> naming the entry.</summary>
    public static AccessList Parse(string text, string source)
    {
        AccessList list;
        try
        {
            list = JsonSerializer.Deserialize<AccessList>(text, Json) ?? throw new InvalidOperationException($"access file {source} is empty");
        }
        catch (JsonException e)
        {
            throw new InvalidOperationException($"access file {source} is not valid: {e.Message}", e);
        }
        var names = new HashSet<string>(StringComparer.Ordinal);
        var hashes = new byte[]?[list.Callers.Count];
        for (int i = 0; i < list.Callers.Count; i++)
        {
            var c = list.Callers[i];
            string where = $"access file {source}, caller {i + 1} ('{c.Name}')";
            if (string.IsNullOrWhiteSpace(c.Name)) throw new InvalidOperationException($"{where}: name is missing");
            if (!names.Add(c.Name)) throw new InvalidOperationException($"{where}: the name is used twice");
            if ((c.KeySha256 is null) == (c.CertificateSubject is null))
                throw new InvalidOperationException($"{where}: give exactly one of key_sha256 and certificate_subject");
            if (c.KeySha256 is { } hex)
            {
                if (hex.Length != 64 || !hex.All(Uri.IsHexDigit))
                    throw new InvalidOperationException($"{where}: key_sha256 must be the key's SHA-256 as 64 hex digits, not the key");
                hashes[i] = Convert.FromHexString(hex);
            }
            if (c.Models.Count == 0) throw new InvalidOperationException($"{where}: models is empty (name models, or \"*\" for all)");
            if (c.RequestsPerSecond < 0 || c.ConcurrentStreams < 1)
                throw new InvalidOperationException($"{where}: requests_per_second must be ≥ 0 and concurrent_streams ≥ 1");
        }
        list.Hashes = hashes;
        return list;
    }

    /// <summary>The caller whose key this is. Compares the key's hash with every stored hash in constant time (no early exit).</summary>
    public CallerEntry? FindKey(string key)
    {
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(Encoding.UTF8.GetBytes(key), hash);
        CallerEntry? found = null;
        for (int i = 0; i < Callers.Count; i++)
            if (Hashes[i] is { } stored && CryptographicOperations.FixedTimeEquals(stored, hash)) found ??= Callers[i];
        return found;
    }

    public CallerEntry? FindSubject(string subject) =>
        Callers.FirstOrDefault(c => c.CertificateSubject is { } s && string.Equals(Normalise(s), Normalise(subject), StringComparison.Ordinal));

    public CallerEntry? Find(string name) => Callers.FirstOrDefault(c => c.Name == name);

    static string Normalise(string subject) => string.Join(", ", subject.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries));
}

/// <summary>
/// The access file as last read: loaded at startup (a mistake stops the server), then checked every
/// Ecmt:Access:ReloadSeconds and replaced when its bytes change (a Kubernetes Secret update swaps the mounted file);
/// a new version with a mistake is logged and the previous one kept.
/// </summary>
public sealed class AccessFile : IDisposable
{
    readonly string _path;
    readonly ILogger<AccessFile> _logger;
    readonly Timer? _timer;
    byte[] _digest = [];
    volatile AccessList _current = new();

    public AccessFile(IOptions<EcmtOptions> options, ILogger<AccessFile> logger)
    {
        var access = options.Value.Access;
        _logger = logger;
        _path = access.File ?? "";
        if (!access.Enabled) return;
        if (!System.IO.File.Exists(_path)) throw new InvalidOperationException($"Ecmt:Access:File {_path} does not exist");
        Reload(throwOnError: true);
        var period = TimeSpan.FromSeconds(access.ReloadSeconds);
        _timer = new Timer(_ => Reload(throwOnError: false), null, period, period);
    }

    public AccessList Current => _current;

    /// <summary>Reads the file again now; true when a new version took effect.</summary>
    public bool Reload(bool throwOnError = false)
    {
        try
        {
            var bytes = System.IO.File.ReadAllBytes(_path);
            var digest = SHA256.HashData(bytes);
            if (digest.AsSpan().SequenceEqual(_digest)) return false;
            // A broken version is reported once, not at every check.
            _digest = digest;
            var list = AccessList.Parse(Encoding.UTF8.GetString(bytes), _path);
            _current = list;
            Log.AccessLoaded(_logger, _path, list.Callers.Count);
            return true;
        }
        catch (Exception e) when (!throwOnError && e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            Log.AccessReloadFailed(_logger, e, _path);
            return false;
        }
    }

    public void Dispose() => _timer?.Dispose();
}
