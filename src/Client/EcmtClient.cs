using System.Diagnostics;
using System.Runtime.CompilerServices;
using Ecmt.Protos.V1;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;

namespace Ecmt.Client;

/// <summary>
/// A client of the ecmt.v1.Classifier service over one gRPC channel, reused by every call (HTTP/2 multiplexes them;
/// more connections open as needed). Thread-safe: share one instance across the application.
/// </summary>
/// <remarks>
/// Classify streams one <see cref="StepUpdate"/> per time step. A client-side <see cref="Protos.StopPolicy"/>, breaking out of the
/// loop or cancelling the token all cancel the call, and the server stops before its next step. UNAVAILABLE is
/// retried before the first update only (<see cref="RetryPolicy"/>); any other failure is an
/// <see cref="EcmtRpcException"/> carrying the status.
/// </remarks>
public sealed class EcmtClient : IDisposable
{
    const string Service = "ecmt.v1.Classifier";
    readonly Classifier.ClassifierClient _stub;
    readonly bool _ownsChannel;

    /// <summary>A client that creates and owns a channel to <paramref name="address"/> ("http://host:port", "https://…", or "host:port" for plain HTTP/2).</summary>
    public EcmtClient(string address, EcmtClientOptions? options = null)
        : this(CreateChannel(ParseAddress(address), options ?? EcmtClientOptions.Default), options, ownsChannel: true)
    {
    }

    /// <summary>A client over a channel the caller owns (and disposes after the client).</summary>
    public EcmtClient(GrpcChannel channel, EcmtClientOptions? options = null) : this(channel, options, ownsChannel: false)
    {
    }

    EcmtClient(GrpcChannel channel, EcmtClientOptions? options, bool ownsChannel)
    {
        ArgumentNullException.ThrowIfNull(channel);
        Options = options ?? EcmtClientOptions.Default;
        Options.Retry.Validate();
        if (Options.DefaultTimeout is { } t && t <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(options), t, "DefaultTimeout must be positive");
        Channel = channel;
        _stub = Options.ApiKey is { Length: > 0 } key
            ? new Classifier.ClassifierClient(channel.Intercept(headers =>
            {
                headers.Add("authorization", $"Bearer {key}");
                return headers;
            }))
            : new Classifier.ClassifierClient(channel);
        _ownsChannel = ownsChannel;
    }

    public GrpcChannel Channel { get; }
    public EcmtClientOptions Options { get; }

    /// <summary>
    /// The channel to an address with the options' TLS settings: a client certificate (mutual TLS) and a private CA
    /// the server's certificate must chain to; the options' <see cref="GrpcChannelOptions"/> otherwise.
    /// </summary>
    public static GrpcChannel CreateChannel(Uri address, EcmtClientOptions options)
    {
        var channelOptions = options.ChannelOptions ?? new GrpcChannelOptions();
        if (options.ClientCertificate is null && options.ServerCertificateAuthorities is null) return GrpcChannel.ForAddress(address, channelOptions);
        var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        if (options.ClientCertificate is { } certificate) handler.SslOptions.ClientCertificates = [certificate];
        if (options.ServerCertificateAuthorities is { } authorities)
            handler.SslOptions.RemoteCertificateValidationCallback = (_, cert, _, errors) =>
            {
                if (cert is null) return false;
                if ((errors & ~SslPolicyErrors.RemoteCertificateChainErrors) != SslPolicyErrors.None) return false;
                using var chain = new X509Chain();
                chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
                chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                return chain.Build(cert as X509Certificate2 ?? X509CertificateLoader.LoadCertificate(cert.GetRawCertData()));
            };
        return GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpHandler = handler,
            MaxReceiveMessageSize = channelOptions.MaxReceiveMessageSize,
            MaxSendMessageSize = channelOptions.MaxSendMessageSize,
            LoggerFactory = channelOptions.LoggerFactory,
        });
    }

    /// <summary>"localhost:50051" → http://localhost:50051/; a URL with a scheme is taken as it is.</summary>
    public static Uri ParseAddress(string address)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(address);
        address = address.Trim();
        if (!address.Contains("://", StringComparison.Ordinal)) address = "http://" + address;
        if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new ArgumentException($"'{address}' is not a server address: use http://host:port, https://host:port or host:port");
        return uri;
    }

    /// <summary>Classifies a PNG or JPEG file; see <see cref="ClassifyAsync(string, ClassifyInput, ClassifyOptions?, CancellationToken)"/>.</summary>
    public IAsyncEnumerable<StepUpdate> ClassifyFileAsync(string model, string path, ClassifyOptions? options = null, CancellationToken cancellationToken = default) =>
        ClassifyAsync(model, ClassifyInput.FromFile(path), options, cancellationToken);

    /// <summary>Classifies PNG or JPEG bytes; see <see cref="ClassifyAsync(string, ClassifyInput, ClassifyOptions?, CancellationToken)"/>.</summary>
    public IAsyncEnumerable<StepUpdate> ClassifyAsync(string model, byte[] image, ClassifyOptions? options = null, CancellationToken cancellationToken = default) =>
        ClassifyAsync(model, ClassifyInput.FromEncoded(image), options, cancellationToken);

    /// <summary>
    /// Streams the prediction of <paramref name="model"/> on <paramref name="input"/> after every time step. The last
    /// update has <see cref="StepUpdate.IsLast"/>: the server ran its steps or met its stop rule, or the client's
    /// <see cref="ClassifyOptions.Stop"/> held (the call is then cancelled before that update is handed out).
    /// </summary>
    /// <exception cref="EcmtRpcException">the call failed (NOT_FOUND, INVALID_ARGUMENT, DEADLINE_EXCEEDED, UNAVAILABLE after the retries, …)</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled</exception>
    public async IAsyncEnumerable<StepUpdate> ClassifyAsync(string model, ClassifyInput input, ClassifyOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        ArgumentNullException.ThrowIfNull(input);
        options ??= ClassifyOptions.Default;
        options.Validate();
        long started = Stopwatch.GetTimestamp();
        var deadline = DeadlineAfter(options.Timeout ?? Options.DefaultTimeout);
        var request = new ClassifyRequest { Model = model, MaxSteps = (uint)options.MaxSteps, TopK = (uint)options.TopK, Stop = options.ServerStop?.ToProto() };
        var clientStop = options.Stop;
        if (clientStop is { IsRecommended: true })
        {
            var info = await GetModelAsync(model, cancellationToken).ConfigureAwait(false);
            clientStop = info.RecommendedStop is { } recommended
                ? Protos.StopPolicy.FromProto(recommended)
                : throw new EcmtRpcException($"{Service}/GetModel", new Status(StatusCode.FailedPrecondition, $"model '{model}' has no recommended stop policy"));
        }
        await input.SetOnAsync(request, cancellationToken).ConfigureAwait(false);

        var (call, update, attempts) = await OpenStreamAsync(request, deadline, cancellationToken).ConfigureAwait(false);
        using (call)
        {
            var tracker = clientStop?.Track();
            while (update is not null)
            {
                var step = Wrap(update, Stopwatch.GetElapsedTime(started), attempts);
                // Every step is observed, the last one too, so that "stable for k steps" counts the same steps as on the server.
                bool met = tracker is not null && tracker.Observe(step.Signal);
                var reason = step.IsLast || !met ? StopReason.None : clientStop!.Rule switch
                {
                    Protos.StopRule.Confidence => StopReason.Confident,
                    Protos.StopRule.Stable => StopReason.Stable,
                    _ => StopReason.Policy,
                };
                if (reason != StopReason.None)
                {
                    // Cancel before handing the update out: the server must not compute while the caller looks at it.
                    call.Dispose();
                    yield return step with { StopReason = reason, StoppedByClient = true };
                    yield break;
                }
                yield return step;
                update = await NextAsync(call, attempts, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Runs a classification to its last update and returns every update.</summary>
    public async Task<Classification> ClassifyToEndAsync(string model, ClassifyInput input, ClassifyOptions? options = null, CancellationToken cancellationToken = default)
    {
        var updates = new List<StepUpdate>();
        await foreach (var update in ClassifyAsync(model, input, options, cancellationToken).ConfigureAwait(false)) updates.Add(update);
        if (updates.Count == 0) throw new EcmtRpcException($"{Service}/Classify", new Status(StatusCode.Internal, "the stream ended without an update"));
        return new Classification(updates);
    }

    /// <summary>The models the server hosts, ready or not.</summary>
    public async Task<IReadOnlyList<ModelInfo>> ListModelsAsync(CancellationToken cancellationToken = default)
    {
        var response = await UnaryAsync("ListModels", o => _stub.ListModelsAsync(new ListModelsRequest(), o), cancellationToken).ConfigureAwait(false);
        return response.Models;
    }

    /// <summary>One hosted model; an <see cref="EcmtRpcException"/> with NOT_FOUND when it is not hosted.</summary>
    public Task<ModelInfo> GetModelAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        return UnaryAsync("GetModel", o => _stub.GetModelAsync(new GetModelRequest { Name = name }, o), cancellationToken);
    }

    /// <summary>Disposes the channel when this client created it.</summary>
    public void Dispose()
    {
        if (_ownsChannel) Channel.Dispose();
    }

    /// <summary>Starts the stream and reads its first update, retrying UNAVAILABLE until one arrives (or the stream ends empty).</summary>
    async Task<(AsyncServerStreamingCall<ClassifyUpdate> Call, ClassifyUpdate? First, int Attempts)> OpenStreamAsync(
        ClassifyRequest request, DateTime? deadline, CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            var call = _stub.Classify(request, new CallOptions(deadline: deadline, cancellationToken: cancellationToken));
            RpcException failure;
            try
            {
                bool any = await call.ResponseStream.MoveNext(CancellationToken.None).ConfigureAwait(false);
                return (call, any ? call.ResponseStream.Current : null, attempt);
            }
            catch (RpcException e)
            {
                call.Dispose();
                failure = e;
            }
            catch
            {
                call.Dispose();
                throw;
            }
            await BeforeRetryAsync("Classify", failure, attempt, deadline, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The next update, or null once the stream has ended with OK. Never retried: updates have arrived.</summary>
    async Task<ClassifyUpdate?> NextAsync(AsyncServerStreamingCall<ClassifyUpdate> call, int attempts, CancellationToken cancellationToken)
    {
        try
        {
            return await call.ResponseStream.MoveNext(CancellationToken.None).ConfigureAwait(false) ? call.ResponseStream.Current : null;
        }
        catch (RpcException e)
        {
            throw Translate("Classify", e, attempts, cancellationToken);
        }
    }

    async Task<T> UnaryAsync<T>(string method, Func<CallOptions, AsyncUnaryCall<T>> start, CancellationToken cancellationToken)
    {
        var deadline = DeadlineAfter(Options.DefaultTimeout);
        for (int attempt = 1; ; attempt++)
        {
            RpcException failure;
            try
            {
                using var call = start(new CallOptions(deadline: deadline, cancellationToken: cancellationToken));
                return await call.ResponseAsync.ConfigureAwait(false);
            }
            catch (RpcException e)
            {
                failure = e;
            }
            await BeforeRetryAsync(method, failure, attempt, deadline, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Returns after the backoff when <paramref name="failure"/> may be retried; otherwise throws what the caller should see.</summary>
    async Task BeforeRetryAsync(string method, RpcException failure, int attempt, DateTime? deadline, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
            throw new OperationCanceledException($"{Service}/{method} was cancelled", failure, cancellationToken);
        var retry = Options.Retry;
        if (failure.StatusCode != StatusCode.Unavailable || attempt >= retry.MaxAttempts)
            throw Translate(method, failure, attempt, cancellationToken);
        var delay = retry.Backoff(attempt);
        if (deadline is { } d && DateTime.UtcNow + delay >= d)
            throw new EcmtRpcException($"{Service}/{method}",
                new Status(StatusCode.DeadlineExceeded, $"the deadline would pass before the next attempt; the last attempt failed with UNAVAILABLE: {failure.Status.Detail}"),
                attempt, failure);
        Options.OnRetry?.Invoke(new RetryEvent($"{Service}/{method}", attempt, failure.Status, delay));
        await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
    }

    static Exception Translate(string method, RpcException e, int attempts, CancellationToken cancellationToken) =>
        e.StatusCode == StatusCode.Cancelled && cancellationToken.IsCancellationRequested
            ? new OperationCanceledException($"{Service}/{method} was cancelled", e, cancellationToken)
            : new EcmtRpcException($"{Service}/{method}", e.Status, attempts, e);

    static DateTime? DeadlineAfter(TimeSpan? timeout) => timeout is { } t ? DateTime.UtcNow + t : null;

    static StepUpdate Wrap(ClassifyUpdate u, TimeSpan elapsed, int attempts)
    {
        var top = u.Top.Select(s => new ClassScore((int)s.Index, s.Name, s.Probability)).ToArray();
        return new StepUpdate
        {
            Step = (int)u.Step,
            Top = top,
            Confidence = u.Confidence,
            Margin = u.Margin,
            Gate = u.HasGate ? u.Gate : null,
            SynapticOperations = (long)u.SynapticOperations,
            EnergyRatio = u.EnergyRatio,
            FiringRate = u.FiringRate,
            StepMilliseconds = u.StepMs,
            ServerElapsedMilliseconds = u.ElapsedMs,
            Elapsed = elapsed,
            StopReason = u.StopReason switch
            {
                Protos.V1.StopReason.MaxSteps => StopReason.MaxSteps,
                Protos.V1.StopReason.Confident => StopReason.Confident,
                Protos.V1.StopReason.Stable => StopReason.Stable,
                Protos.V1.StopReason.Policy => StopReason.Policy,
                _ => StopReason.None,
            },
            Attempts = attempts,
            Raw = u,
        };
    }
}
