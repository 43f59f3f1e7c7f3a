using System.ComponentModel.DataAnnotations;

namespace Ecmt.Server;

/// <summary>
/// The server's settings: section <c>Ecmt</c> of the standard ASP.NET Core configuration (appsettings.json, then
/// environment variables such as <c>Ecmt__ModelDirectory</c>, then the command line such as
/// <c>--Ecmt:Port=50051</c> or the short switches of <see cref="ServerApp.SwitchMappings"/>). README.md lists every key.
/// </summary>
public sealed class EcmtOptions
{
    public const string Section = "Ecmt";

    /// <summary>Folder whose converted models are served (or a converted model's own folder); unset: the shipped default model.</summary>
    public string? ModelDirectory { get; set; }

    /// <summary>auto, cuda, opencl, cpu, fastcpu or reference; unset: <c>ECMT_BACKEND</c>, else auto.</summary>
    public string? Backend { get; set; }

    /// <summary>IP address to listen on: 0.0.0.0 (every IPv4 interface), :: or * (every interface), localhost, or an address.</summary>
    [Required] public string Address { get; set; } = "0.0.0.0";

    /// <summary>gRPC port (HTTP/2; with TLS also HTTP/1.1 through ALPN). 0 picks a free port.</summary>
    [Range(0, 65535)] public int Port { get; set; } = 50051;

    /// <summary>
    /// HTTP/1.1 port (with TLS: HTTPS, HTTP/1.1 and HTTP/2) for the Open Inference Protocol's REST endpoints, the
    /// streaming endpoint, the OpenAPI description and the live page at /. 0: no such listener, the endpoints stay on
    /// the gRPC port (reachable there over HTTP/2, or HTTP/1.1 through ALPN with TLS).
    /// </summary>
    [Range(0, 65535)] public int HttpPort { get; set; } = 8080;

    /// <summary>Plain HTTP/1.1 port for /metrics and /healthz (Prometheus scrapers speak HTTP/1.1). 0: no such listener, the endpoints stay on the gRPC port.</summary>
    [Range(0, 65535)] public int MetricsPort { get; set; } = 9464;

    /// <summary>Steps run when a request asks for 0.</summary>
    [Range(1, int.MaxValue)] public int DefaultSteps { get; set; } = 8;

    public TlsOptions Tls { get; set; } = new();
    public Access.AccessOptions Access { get; set; } = new();
    public LimitOptions Limits { get; set; } = new();
    public BatchingSettings Batching { get; set; } = new();
    public ShutdownOptions Shutdown { get; set; } = new();
}

/// <summary>Optional TLS on the gRPC port: PEM certificate and key files, or a PKCS#12 file with its password.</summary>
public sealed class TlsOptions
{
    /// <summary>PEM certificate (chain) or .pfx/.p12 file. Unset: no TLS.</summary>
    public string? CertificateFile { get; set; }
    /// <summary>PEM private key; unset when the certificate file holds the key (PEM or PKCS#12).</summary>
    public string? KeyFile { get; set; }
    /// <summary>Password of a PKCS#12 file or an encrypted PEM key.</summary>
    public string? Password { get; set; }
    /// <summary>PEM file of the CA(s) client certificates must chain to (mutual TLS; needs Ecmt:Access:File to name the subjects). Unset: no client certificates asked for.</summary>
    public string? ClientCaFile { get; set; }
    /// <summary>Refuse the TLS handshake without a client certificate (callers cannot use API keys then). Default: ask for one, accept API keys too.</summary>
    public bool RequireClientCertificate { get; set; }

    public bool Enabled => !string.IsNullOrWhiteSpace(CertificateFile);
}

public sealed class LimitOptions
{
    /// <summary>
    /// Classifications admitted at once (running in a model's batch or waiting for a slot), over all models and
    /// protocols; one more is refused with RESOURCE_EXHAUSTED (REST: 429). The default is one model's
    /// <see cref="BatchingSettings.MaxBatch"/> + <see cref="BatchingSettings.QueueLength"/>.
    /// </summary>
    [Range(1, 100_000)] public int MaxConcurrentStreams { get; set; } = 96;
    /// <summary>Largest request message (gRPC) or body (REST) in bytes; larger ones are refused with RESOURCE_EXHAUSTED (REST: 413).</summary>
    [Range(1024, int.MaxValue)] public int MaxMessageBytes { get; set; } = 4 * 1024 * 1024;
    /// <summary>Most time steps a request may ask for; more is OUT_OF_RANGE.</summary>
    [Range(1, 1_000_000)] public int MaxSteps { get; set; } = 128;
}

/// <summary>
/// Continuous batching: each model's step scheduler runs every admitted image in one batched session, one time step
/// for all at once. Defaults measured on the shipped model (docs/benchmarks.md).
/// </summary>
public sealed class BatchingSettings
{
    /// <summary>Most images in one step of a model's batch.</summary>
    [Range(1, 4096)] public int MaxBatch { get; set; } = 32;
    /// <summary>Memory for the spiking state of a model's slots, in MiB: the batch limit is min(MaxBatch, budget / state per image).</summary>
    [Range(1, 1_000_000)] public int StateBudgetMegabytes { get; set; } = 1024;
    /// <summary>Requests per model that may wait for a slot; one more is refused with RESOURCE_EXHAUSTED and grpc-retry-pushback-ms.</summary>
    [Range(0, 100_000)] public int QueueLength { get; set; } = 64;
    /// <summary>Threads the fast CPU backend uses for one model's steps; 0: every core.</summary>
    [Range(0, 1024)] public int Threads { get; set; }
    /// <summary>Linux nice value of each model's step thread (0 … 19): above 0 lets health checks and I/O run first under full load.</summary>
    [Range(0, 19)] public int Nice { get; set; } = 10;

    public Engine.Serving.BatchingOptions ToEngine() => new()
    {
        MaxBatch = MaxBatch,
        StateBudgetBytes = (long)StateBudgetMegabytes << 20,
        QueueLength = QueueLength,
        Threads = Threads > 0 ? Threads : Environment.ProcessorCount,
        Nice = Nice,
    };
}

public sealed class ShutdownOptions
{
    /// <summary>Seconds between health turning NOT_SERVING and the listeners closing, so load balancers can stop routing here.</summary>
    [Range(0, 3600)] public double DrainDelaySeconds { get; set; }
    /// <summary>Seconds in-flight streams get to finish once the listeners close; then they are cancelled.</summary>
    [Range(0, 3600)] public double TimeoutSeconds { get; set; } = 30;
}
