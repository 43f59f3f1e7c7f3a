using System.Globalization;
using System.Security.Claims;
using System.Threading.RateLimiting;
using Ecmt.Engine.Serving;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace Ecmt.Server.Access;

/// <summary>
/// The per-caller step of <see cref="Classifications"/>: which models the calling principal may see and use
/// (PERMISSION_DENIED otherwise), and its own admission: classifications per second (a token bucket) and at once (a
/// concurrency limit), both partitioned by caller with System.Threading.RateLimiting, refused with RESOURCE_EXHAUSTED
/// and <c>grpc-retry-pushback-ms</c> (REST: 429 and Retry-After). With access control off every model is open and
/// there are no per-caller limits.
/// </summary>
sealed class CallerAccess : IDisposable
{
    /// <summary>Pushback on a concurrency refusal: a running stream's end is not known, so a short, fixed wait.</summary>
    const int ConcurrencyPushbackMs = 250;

    readonly IHttpContextAccessor _http;
    readonly AccessFile _file;
    readonly AccessOptions _options;
    readonly int _defaultConcurrent;
    readonly PartitionedRateLimiter<Limits> _rate;
    readonly PartitionedRateLimiter<Limits> _streams;

    /// <summary>A caller's limits; part of the partition key, so a reloaded access file with new limits starts fresh limiters.</summary>
    readonly record struct Limits(string Caller, int RequestsPerSecond, int ConcurrentStreams);

    public CallerAccess(IHttpContextAccessor http, AccessFile file, IOptions<EcmtOptions> options)
    {
        _http = http;
        _file = file;
        _options = options.Value.Access;
        _defaultConcurrent = _options.ConcurrentStreams ?? Math.Max(1, (options.Value.Limits.MaxConcurrentStreams + 1) / 2);
        _rate = PartitionedRateLimiter.Create<Limits, Limits>(l => l.RequestsPerSecond <= 0
            ? RateLimitPartition.GetNoLimiter(l)
            : RateLimitPartition.GetTokenBucketLimiter(l, k => new TokenBucketRateLimiterOptions
            {
                TokenLimit = k.RequestsPerSecond,
                TokensPerPeriod = k.RequestsPerSecond,
                ReplenishmentPeriod = TimeSpan.FromSeconds(1),
                QueueLimit = 0,
                AutoReplenishment = false,
            }));
        _streams = PartitionedRateLimiter.Create<Limits, Limits>(l => RateLimitPartition.GetConcurrencyLimiter(l, k => new ConcurrencyLimiterOptions
        {
            PermitLimit = k.ConcurrentStreams,
            QueueLimit = 0,
        }));
    }

    public bool Enabled => _options.Enabled;

    /// <summary>The principal of the current call (gRPC or REST); null outside a call.</summary>
    ClaimsPrincipal? User => _http.HttpContext?.User;

    /// <summary>Whether the current caller may use the model (always, with access control off).</summary>
    public bool Allows(string model) =>
        !Enabled || User is { } user && user.FindAll(CallerAuthenticationHandler.ModelClaim).Any(c => c.Value == "*" || c.Value == model);

    /// <summary>PERMISSION_DENIED unless the current caller may use the model.</summary>
    public void RequireModel(HostedModel model)
    {
        if (!Allows(model.Name))
            throw Classifications.Fail(StatusCode.PermissionDenied, $"caller '{User?.Identity?.Name}' may not use model '{model.Name}'");
    }

    /// <summary>
    /// Admits one classification for the current caller, or throws RESOURCE_EXHAUSTED with the pushback: over its rate
    /// (the token bucket says when a token is back) or over its concurrent streams. Dispose the result when it ends.
    /// </summary>
    public IDisposable? Admit()
    {
        if (!Enabled || User?.Identity?.Name is not { } name) return null;
        var entry = _file.Current.Find(name);
        var limits = new Limits(name, entry?.RequestsPerSecond ?? _options.RequestsPerSecond, entry?.ConcurrentStreams ?? _defaultConcurrent);
        using (var rate = _rate.AttemptAcquire(limits))
            if (!rate.IsAcquired)
            {
                int ms = rate.TryGetMetadata(MetadataName.RetryAfter, out var after) ? (int)Math.Ceiling(after.TotalMilliseconds) : 1000;
                throw Refused($"caller '{name}' is over its {limits.RequestsPerSecond} classifications per second; retry in {ms} ms", ms);
            }
        var stream = _streams.AttemptAcquire(limits);
        if (stream.IsAcquired) return stream;
        stream.Dispose();
        throw Refused($"caller '{name}' is running its {limits.ConcurrentStreams} classifications at once; retry when one ends", ConcurrencyPushbackMs);
    }

    static RpcException Refused(string message, int pushbackMs) =>
        Classifications.Fail(StatusCode.ResourceExhausted, message,
            new Metadata { { "grpc-retry-pushback-ms", Math.Max(1, pushbackMs).ToString(CultureInfo.InvariantCulture) } });

    public void Dispose()
    {
        _rate.Dispose();
        _streams.Dispose();
    }
}
