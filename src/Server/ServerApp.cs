using System.Net;
using System.Security.Cryptography.X509Certificates;
using Ecmt.Engine.Serving;
using Ecmt.Server.Access;
using Ecmt.Server.Oip;
using Grpc.AspNetCore.HealthChecks;
using Grpc.AspNetCore.Server;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace Ecmt.Server;

/// <summary>
/// Builds the server: configuration, Kestrel listeners, the gRPC services (ecmt.v1, the Open Inference Protocol),
/// REST, the page, health, reflection, metrics. Tests build it the same way.
/// </summary>
public static class ServerApp
{
    /// <summary>The OpenAPI description's name: it is served at /openapi/ecmt.json.</summary>
    public const string OpenApiDocument = "ecmt";

    /// <summary>Short command-line switches for the common keys (the long form --Ecmt:Key=value works for every key).</summary>
    public static readonly IReadOnlyDictionary<string, string> SwitchMappings = new Dictionary<string, string>
    {
        ["--models"] = "Ecmt:ModelDirectory",
        ["--backend"] = "Ecmt:Backend",
        ["--address"] = "Ecmt:Address",
        ["--port"] = "Ecmt:Port",
        ["--http-port"] = "Ecmt:HttpPort",
        ["--metrics-port"] = "Ecmt:MetricsPort",
        ["--tls-cert"] = "Ecmt:Tls:CertificateFile",
        ["--tls-key"] = "Ecmt:Tls:KeyFile",
    };

    public static WebApplicationBuilder CreateBuilder(string[] args)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        // Later sources win: appsettings.json < environment (Ecmt__Port, …) < command line (with the short switches).
        builder.Configuration.AddCommandLine(args, SwitchMappings.ToDictionary());
        // An unhealthy check is a state the health service reports (a model loading), not an error to log each time.
        builder.Logging.AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks.DefaultHealthCheckService", LogLevel.Critical);
        var services = builder.Services;

        services.AddOptions<EcmtOptions>().Bind(builder.Configuration.GetSection(EcmtOptions.Section))
            .ValidateDataAnnotations()
            .Validate(o => o.DefaultSteps <= o.Limits.MaxSteps, "Ecmt:DefaultSteps must not exceed Ecmt:Limits:MaxSteps")
            .Validate(o => DistinctPorts(o), "Ecmt:Port, Ecmt:HttpPort and Ecmt:MetricsPort must differ (a port of 0 opens no listener, except Ecmt:Port, which picks a free one)")
            .Validate(o => !o.Tls.Enabled || File.Exists(o.Tls.CertificateFile), "Ecmt:Tls:CertificateFile does not exist")
            .Validate(o => o.Tls.KeyFile is null || File.Exists(o.Tls.KeyFile), "Ecmt:Tls:KeyFile does not exist")
            .Validate(o => o.Tls.ClientCaFile is null || (o.Tls.Enabled && o.Access.Enabled),
                "Ecmt:Tls:ClientCaFile needs TLS (Ecmt:Tls:CertificateFile) and an access file naming the certificate subjects (Ecmt:Access:File)")
            .Validate(o => o.Tls.ClientCaFile is null || File.Exists(o.Tls.ClientCaFile), "Ecmt:Tls:ClientCaFile does not exist")
            .Validate(o => !o.Tls.RequireClientCertificate || o.Tls.ClientCaFile is not null, "Ecmt:Tls:RequireClientCertificate needs Ecmt:Tls:ClientCaFile")
            .ValidateOnStart();
        // The host's shutdown budget covers the drain delay (spent in ApplicationStopping) and then the streams' time,
        // so in-flight streams get the full TimeoutSeconds after the listeners close, as documented.
        services.Configure<HostOptions>(o =>
        {
            var shutdown = Options(builder).Shutdown;
            o.ShutdownTimeout = TimeSpan.FromSeconds(shutdown.DrainDelaySeconds + shutdown.TimeoutSeconds);
        });

        services.AddSingleton(sp => new EngineMetrics(sp.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>()));
        services.AddSingleton<ServerMetrics>();
        services.AddSingleton<ServerLifecycle>();
        services.AddSingleton<StreamLimiter>();
        AddAccess(services);
        services.AddSingleton<Classifications>();
        services.AddSingleton<OipInference>();
        services.AddSingleton<ModelHost>();
        services.AddHostedService(sp => sp.GetRequiredService<ModelHost>());

        services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = Options(builder).Limits.MaxMessageBytes;
            o.EnableDetailedErrors = false;
        });
        services.AddGrpcReflection();
        // REST objects in snake_case, for the endpoints and for the OpenAPI description generated from them.
        services.ConfigureHttpJsonOptions(o => RestJson.Configure(o.SerializerOptions));
        services.AddOpenApi(OpenApiDocument, o => o.AddDocumentTransformer((document, _, _) =>
        {
            document.Info = new Microsoft.OpenApi.OpenApiInfo
            {
                Title = "Ecmt REST API",
                Version = OipInference.ServerVersion,
                Description = "The Open Inference Protocol (KServe v2) over REST, a streaming endpoint with one JSON line per time step, "
                    + "and ecmt.v1's model listing as JSON. Error bodies are {\"error\": \"...\"}; the statuses are src/Server/README.md's.",
            };
            return Task.CompletedTask;
        }));
        services.AddGrpcHealthChecks();
        services.AddSingleton<HealthSetup>();
        services.AddSingleton<IConfigureOptions<HealthCheckServiceOptions>>(sp => sp.GetRequiredService<HealthSetup>());
        services.AddSingleton<IConfigureOptions<GrpcHealthChecksOptions>>(sp => sp.GetRequiredService<HealthSetup>());
        services.Configure<HealthCheckPublisherOptions>(o =>
        {
            o.Delay = TimeSpan.Zero;
            o.Period = TimeSpan.FromSeconds(10);
        });
        services.AddSingleton<HealthStatusPublisher>();
        services.AddHostedService(sp => sp.GetRequiredService<HealthStatusPublisher>());

        services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService("ecmt-server"))
            .WithMetrics(m => m
                .AddMeter(EngineMetrics.MeterName, ServerMetrics.MeterName, "Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel")
                .AddPrometheusExporter());

        builder.WebHost.ConfigureKestrel((context, kestrel) => ConfigureListeners(kestrel, Options(builder)));
        return builder;
    }

    public static WebApplication Build(WebApplicationBuilder builder)
    {
        var app = builder.Build();
        var options = app.Services.GetRequiredService<IOptions<EcmtOptions>>().Value;
        var access = options.Access;
        // Read the access file now: a mistake in it stops the server at startup, like any configuration mistake.
        app.Services.GetRequiredService<AccessFile>();
        app.UseMiddleware<GrpcStatusMiddleware>();
        if (options.MetricsPort > 0) app.Use(MetricsPortOnly(options.MetricsPort));
        app.UseRouting();
        // Without an access file there is no default scheme and no fallback policy: both middlewares pass every request.
        app.UseAuthentication();
        app.UseAuthorization();
        // With access control on, every endpoint needs a caller (the fallback policy) except those marked open below.
        bool openHealth = !access.Enabled || access.OpenHealth;
        app.MapGrpcService<ClassifierService>();
        app.MapGrpcService<OipGrpcService>().Add(endpoint =>
        {
            // The Open Inference Protocol's server health is open to probes like grpc.health.v1.
            if (openHealth && endpoint.Metadata.OfType<GrpcMethodMetadata>().FirstOrDefault()?.Method.Name is "ServerLive" or "ServerReady")
                endpoint.Metadata.Add(new AllowAnonymousAttribute());
        });
        RestApi.Map(app, openHealth);
        Page.Map(app);
        app.MapOpenApi().AllowAnonymous();
        var health = app.MapGrpcHealthChecksService();
        if (openHealth) health.AllowAnonymous();
        if (access.Reflection) app.MapGrpcReflectionService();
        // Scrapers reach the metrics port only (the NetworkPolicy admits the monitoring namespace there); it needs no caller.
        app.MapPrometheusScrapingEndpoint("/metrics").AllowAnonymous();
        // HTTP probes for orchestrators that do not speak gRPC health: live while the process answers, ready as health "".
        var live = app.MapHealthChecks("/healthz/live", new HealthCheckOptions { Predicate = _ => false });
        var ready = app.MapHealthChecks("/healthz/ready", new HealthCheckOptions { Predicate = r => r.Name == HealthNames.ServerCheck });
        if (openHealth)
        {
            live.AllowAnonymous();
            ready.AllowAnonymous();
        }
        return app;
    }

    /// <summary>
    /// The metrics port serves /metrics and /healthz/* and nothing else (no classification reaches it), and /metrics is
    /// served there only: the other ports answer it 404.
    /// </summary>
    static Func<HttpContext, RequestDelegate, Task> MetricsPortOnly(int metricsPort) => (context, next) =>
    {
        var path = context.Request.Path;
        bool metrics = path == "/metrics", health = path.StartsWithSegments("/healthz");
        bool onMetricsPort = context.Connection.LocalPort == metricsPort;
        if (onMetricsPort ? !(metrics || health) : metrics)
        {
            context.Response.StatusCode = StatusCodes.Status404NotFound;
            return Task.CompletedTask;
        }
        return next(context);
    };

    /// <summary>Access control (off without Ecmt:Access:File): the caller scheme, the policy every endpoint falls back to, the refusals' shape.</summary>
    static void AddAccess(IServiceCollection services)
    {
        services.AddHttpContextAccessor();
        services.AddSingleton<AccessFile>();
        services.AddSingleton<ClientCertificates>();
        services.AddSingleton<CallerAccess>();
        // The scheme is named by the fallback policy only, so it runs only where access control is on.
        services.AddAuthentication()
            .AddScheme<AuthenticationSchemeOptions, CallerAuthenticationHandler>(CallerAuthenticationHandler.SchemeName, null);
        services.AddAuthorization();
        services.AddOptions<AuthorizationOptions>().Configure<IOptions<EcmtOptions>>((authorization, ecmt) =>
        {
            if (ecmt.Value.Access.Enabled)
                authorization.FallbackPolicy = new AuthorizationPolicyBuilder(CallerAuthenticationHandler.SchemeName).RequireAuthenticatedUser().Build();
        });
        services.AddSingleton<IAuthorizationMiddlewareResultHandler, AccessResultHandler>();
    }

    public static async Task<int> RunAsync(string[] args)
    {
        try
        {
            await using var app = Build(CreateBuilder(args));
            await app.RunAsync();
            return 0;
        }
        catch (Exception e) when (IsConfigurationError(e))
        {
            // Configuration mistakes found at startup: say what is wrong, without a stack trace.
            await Console.Error.WriteLineAsync($"ecmt-server: {e.Message}");
            return 2;
        }
    }

    static bool IsConfigurationError(Exception e) =>
        e is InvalidOperationException or OptionsValidationException or ArgumentException or IOException or UnauthorizedAccessException
            or Kernels.BackendUnavailableException or System.Security.Cryptography.CryptographicException
        || (e is AggregateException { InnerExceptions.Count: 1 } a && IsConfigurationError(a.InnerException!));

    static EcmtOptions Options(WebApplicationBuilder builder)
    {
        var options = new EcmtOptions();
        builder.Configuration.GetSection(EcmtOptions.Section).Bind(options);
        return options;
    }

    static void ConfigureListeners(KestrelServerOptions kestrel, EcmtOptions o)
    {
        X509Certificate2? certificate = o.Tls.Enabled ? LoadCertificate(o.Tls) : null;
        // Mutual TLS: the handshake asks for a client certificate (requires one with RequireClientCertificate); the
        // caller scheme checks it against Ecmt:Tls:ClientCaFile, so a wrong CA is UNAUTHENTICATED with a reason.
        var https = certificate is null ? null : new HttpsConnectionAdapterOptions
        {
            ServerCertificate = certificate,
            ClientCertificateMode = o.Tls.ClientCaFile is null ? ClientCertificateMode.NoCertificate
                : o.Tls.RequireClientCertificate ? ClientCertificateMode.RequireCertificate : ClientCertificateMode.AllowCertificate,
            ClientCertificateValidation = (_, _, _) => true,
        };
        Listen(kestrel, o.Address, o.Port, listen =>
        {
            if (https is null) listen.Protocols = HttpProtocols.Http2;
            else
            {
                listen.Protocols = HttpProtocols.Http1AndHttp2;
                listen.UseHttps(https);
            }
        });
        if (o.HttpPort > 0)
            Listen(kestrel, o.Address, o.HttpPort, listen =>
            {
                if (https is null) listen.Protocols = HttpProtocols.Http1;
                else
                {
                    listen.Protocols = HttpProtocols.Http1AndHttp2;
                    listen.UseHttps(https);
                }
            });
        if (o.MetricsPort > 0) Listen(kestrel, o.Address, o.MetricsPort, listen => listen.Protocols = HttpProtocols.Http1);
    }

    static bool DistinctPorts(EcmtOptions o)
    {
        int[] opened = [.. new[] { o.Port, o.HttpPort, o.MetricsPort }.Where(p => p > 0)];
        return opened.Distinct().Count() == opened.Length;
    }

    static void Listen(KestrelServerOptions kestrel, string address, int port, Action<ListenOptions> configure)
    {
        switch (address.Trim())
        {
            case "*" or "::" or "[::]":
                kestrel.ListenAnyIP(port, configure);
                break;
            case "localhost":
                kestrel.ListenLocalhost(port, configure);
                break;
            default:
                if (!IPAddress.TryParse(address.Trim().Trim('[', ']'), out var ip))
                    throw new InvalidOperationException($"Ecmt:Address '{address}' is not an IP address (use 0.0.0.0, ::, localhost or an address)");
                kestrel.Listen(ip, port, configure);
                break;
        }
    }

    static X509Certificate2 LoadCertificate(TlsOptions tls)
    {
        var path = tls.CertificateFile!;
        if (path.EndsWith(".pfx", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".p12", StringComparison.OrdinalIgnoreCase))
            return X509CertificateLoader.LoadPkcs12FromFile(path, tls.Password);
        return tls.Password is { Length: > 0 } password
            ? X509Certificate2.CreateFromEncryptedPemFile(path, password, tls.KeyFile)
            : X509Certificate2.CreateFromPemFile(path, tls.KeyFile);
    }
}
