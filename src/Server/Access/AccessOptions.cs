using System.ComponentModel.DataAnnotations;

namespace Ecmt.Server.Access;

/// <summary>
/// Access control (section <c>Ecmt:Access</c>): off unless <see cref="File"/> is set. The file names the callers (API
/// keys by their SHA-256, client-certificate subjects), the models each may use and their limits; it is read again
/// when it changes. Client certificates also need <c>Ecmt:Tls:ClientCaFile</c>.
/// </summary>
public sealed class AccessOptions
{
    /// <summary>The access file (JSON, <see cref="AccessFile"/>): e.g. a Kubernetes Secret's key mounted as a file. Unset: no access control.</summary>
    public string? File { get; set; }

    /// <summary>How often the file is checked for changes (seconds); a changed file takes effect without a restart.</summary>
    [Range(0.1, 3600)] public double ReloadSeconds { get; set; } = 2;

    /// <summary>Health (grpc.health.v1, /healthz/*, /v2/health/*, OIP ServerLive and ServerReady) answers without a credential, for probes.</summary>
    public bool OpenHealth { get; set; } = true;

    /// <summary>Server reflection is served (to authenticated callers when access control is on).</summary>
    public bool Reflection { get; set; } = true;

    /// <summary>Classifications a caller may start per second (its default; an access-file entry may set its own). 0: no limit.</summary>
    [Range(0, 1_000_000)] public int RequestsPerSecond { get; set; }

    /// <summary>Classifications a caller may run at once (its default; an access-file entry may set its own). Unset: half of Ecmt:Limits:MaxConcurrentStreams (at least 1), so one caller cannot take every slot.</summary>
    [Range(1, 100_000)] public int? ConcurrentStreams { get; set; }

    public bool Enabled => !string.IsNullOrWhiteSpace(File);
}
