using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;

namespace Ecmt.Client;

/// <summary>Settings of an <see cref="EcmtClient"/>, shared by every call it makes.</summary>
public sealed record EcmtClientOptions
{
    public static readonly EcmtClientOptions Default = new();

    /// <summary>Deadline of each call (retries included) unless the call sets its own; null: no deadline.</summary>
    public TimeSpan? DefaultTimeout { get; init; }
    /// <summary>How calls that fail with UNAVAILABLE before any response are retried.</summary>
    public RetryPolicy Retry { get; init; } = RetryPolicy.Default;
    /// <summary>Called before each retry (for logs); runs on the calling task, keep it short.</summary>
    public Action<RetryEvent>? OnRetry { get; init; }
    /// <summary>Options of the channel the client creates from an address (ignored when it is given a channel).</summary>
    public GrpcChannelOptions? ChannelOptions { get; init; }
    /// <summary>API key of a server with access control: sent as <c>authorization: Bearer &lt;key&gt;</c> on every call (also over a given channel).</summary>
    public string? ApiKey { get; init; }
    /// <summary>Client certificate (with its private key) for a server with mutual TLS; used by the channel the client creates from an https address.</summary>
    public X509Certificate2? ClientCertificate { get; init; }
    /// <summary>CA certificates the server's certificate must chain to (a private CA); null: the system's trust store. Used by the channel the client creates.</summary>
    public X509Certificate2Collection? ServerCertificateAuthorities { get; init; }

    /// <summary>
    /// The client certificate from PEM files (certificate, and key unless the certificate file holds it), as the TLS
    /// stack can use it on every platform.
    /// </summary>
    public static X509Certificate2 LoadClientCertificate(string certificateFile, string? keyFile = null)
    {
        using var pem = X509Certificate2.CreateFromPemFile(certificateFile, keyFile);
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>The certificates of a PEM file (a CA bundle).</summary>
    public static X509Certificate2Collection LoadAuthorities(string pemFile)
    {
        var authorities = new X509Certificate2Collection();
        authorities.ImportFromPemFile(pemFile);
        return authorities;
    }
}

/// <summary>
/// Retry of UNAVAILABLE (server starting or shutting down, model still loading, connection refused) before the first
/// response: up to <see cref="MaxAttempts"/> attempts in all, waiting an exponentially growing backoff with ±20%
/// jitter between them, never past the call's deadline. A call is never retried once an update has arrived, and no
/// other status is retried (the server may have done work, or the request is at fault).
/// </summary>
public sealed record RetryPolicy
{
    public static readonly RetryPolicy Default = new();
    /// <summary>One attempt: no retry.</summary>
    public static readonly RetryPolicy None = new() { MaxAttempts = 1 };

    /// <summary>Attempts in all, the first included (1: no retry).</summary>
    public int MaxAttempts { get; init; } = 5;
    /// <summary>Wait before the first retry.</summary>
    public TimeSpan InitialBackoff { get; init; } = TimeSpan.FromMilliseconds(100);
    /// <summary>Longest wait between attempts.</summary>
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Each wait is this many times the one before.</summary>
    public double BackoffMultiplier { get; init; } = 2;

    internal void Validate()
    {
        if (MaxAttempts < 1) throw new ArgumentOutOfRangeException(nameof(MaxAttempts), MaxAttempts, "MaxAttempts must be at least 1");
        if (InitialBackoff < TimeSpan.Zero || MaxBackoff < InitialBackoff)
            throw new ArgumentOutOfRangeException(nameof(InitialBackoff), "backoffs must satisfy 0 <= InitialBackoff <= MaxBackoff");
        if (!(BackoffMultiplier >= 1)) throw new ArgumentOutOfRangeException(nameof(BackoffMultiplier), BackoffMultiplier, "BackoffMultiplier must be at least 1");
    }

    /// <summary>The wait after failed attempt <paramref name="attempt"/> (1-based).</summary>
    internal TimeSpan Backoff(int attempt)
    {
        double ms = Math.Min(InitialBackoff.TotalMilliseconds * Math.Pow(BackoffMultiplier, attempt - 1), MaxBackoff.TotalMilliseconds);
        return TimeSpan.FromMilliseconds(ms * (0.8 + 0.4 * Random.Shared.NextDouble()));
    }
}

/// <summary>A retry about to happen: the call, the attempt that failed (1-based), its status and the wait before the next.</summary>
public sealed record RetryEvent(string Method, int FailedAttempt, Status Status, TimeSpan Delay);
