using System.CommandLine;
using Ecmt.Client;
using Ecmt.Protos;
using Spectre.Console;
using ModelInfo = Ecmt.Protos.V1.ModelInfo;

namespace Ecmt.Cli;

/// <summary>The options that reach a running ecmt-server, shared by classify and bench-server, and what they build.</summary>
sealed class ServerOptions
{
    public const string DefaultAddress = "http://localhost:50051";

    public readonly Option<string> Server = new("--server")
    {
        Description = $"Server address: http://host:port, https://host:port or host:port (default: $ECMT_SERVER, else {DefaultAddress})",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("ECMT_SERVER") is { Length: > 0 } address ? address : DefaultAddress,
    };
    public readonly Option<string?> Model = new("--model") { Description = "Hosted model to use (default: the server's only ready model)" };
    public readonly Option<int> MaxSteps = new("--max-steps") { Description = "Time steps T at most per image (0: the model's default)", DefaultValueFactory = _ => 0 };
    public readonly Option<double?> StopAt = new("--stop-at") { Description = "Stop rule: the calibrated top-1 probability reaches p (0 < p <= 1)" };
    public readonly Option<double?> Margin = new("--margin") { Description = "Stop rule: the top-1 leads the top-2 calibrated probability by m (0 < m <= 1)" };
    public readonly Option<int?> Stable = new("--stable") { Description = "Stop rule: the top-1 class equals that of each of the k steps before (k >= 1)" };
    public readonly Option<int?> MinSteps = new("--min-steps") { Description = "Stop rule: at least m steps have run" };
    public readonly Option<double?> Gate = new("--gate") { Description = "Stop rule: the model's gate (its estimate that the top-1 is final) reaches g (0 < g <= 1)" };
    public readonly Option<bool> Recommended = new("--recommended") { Description = "Stop with the model's recommended policy (chosen at conversion on validation images; ModelInfo.recommended_stop)" };
    public readonly Option<bool> ServerStop = new("--server-stop") { Description = "Send the stop policy to the server instead of applying it here (saves the step in flight)" };
    public readonly Option<double?> Timeout = new("--timeout") { Description = "Deadline of each call in seconds (retries included)" };
    public readonly Option<bool> Json = new("--json") { Description = "Print one JSON object on standard output instead of tables" };
    public readonly Option<string?> ApiKey = new("--api-key")
    {
        Description = "API key of a server with access control, sent as 'authorization: Bearer <key>' (default: $ECMT_API_KEY)",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("ECMT_API_KEY") is { Length: > 0 } key ? key : null,
    };
    public readonly Option<string?> ClientCert = new("--client-cert") { Description = "PEM client certificate for a server with mutual TLS (https addresses)" };
    public readonly Option<string?> ClientKey = new("--client-key") { Description = "PEM private key of --client-cert (unless the certificate file holds it)" };
    public readonly Option<string?> CaCert = new("--ca-cert") { Description = "PEM CA certificate(s) the server's certificate must chain to (default: the system's trust store)" };

    public IEnumerable<Option> All => [Server, Model, MaxSteps, StopAt, Margin, Stable, MinSteps, Gate, Recommended, ServerStop, Timeout, Json, ApiKey, ClientCert, ClientKey, CaCert];

    /// <summary>
    /// The per-image options from the command line: the stop rules given form one policy (every rule must hold), applied
    /// by the client (it cancels the call) or, with --server-stop, by the server. <see cref="ArgumentException"/> for
    /// values out of range.
    /// </summary>
    public ClassifyOptions ClassifyOptions(ParseResult parse, int topK)
    {
        int maxSteps = parse.GetValue(MaxSteps);
        if (maxSteps < 0) throw new ArgumentException($"--max-steps is {maxSteps}: use 0 (the model's default) or more");
        var timeout = parse.GetValue(Timeout) is double seconds
            ? seconds > 0 ? TimeSpan.FromSeconds(seconds) : throw new ArgumentException($"--timeout is {seconds}: it must be positive")
            : (TimeSpan?)null;
        var options = new ClassifyOptions { MaxSteps = maxSteps, TopK = topK, Timeout = timeout };
        var rules = new StopPolicy
        {
            MinConfidence = parse.GetValue(StopAt), MinMargin = parse.GetValue(Margin), StableSteps = parse.GetValue(Stable),
            MinSteps = parse.GetValue(MinSteps), MinGate = parse.GetValue(Gate),
        };
        if (parse.GetValue(Recommended))
        {
            if (!rules.IsEmpty) throw new ArgumentException("--recommended is the model's own policy: give no other stop rule with it");
            rules = StopPolicy.Recommended;
        }
        if (rules.IsEmpty) return options;
        try
        {
            rules.Validate();
        }
        catch (ArgumentException e)
        {
            // Name the option, not the wire field.
            throw new ArgumentException(e.Message.Replace("stop.min_confidence", "--stop-at").Replace("stop.min_margin", "--margin")
                .Replace("stop.stable_steps", "--stable").Replace("stop.min_steps", "--min-steps").Replace("stop.min_gate", "--gate"));
        }
        return parse.GetValue(ServerStop) ? options with { ServerStop = rules } : options with { Stop = rules };
    }

    /// <summary>The --server address; <see cref="ArgumentException"/> when it is not one.</summary>
    public Uri Address(ParseResult parse) => EcmtClient.ParseAddress(parse.GetValue(Server)!);

    /// <summary>The one client of a command: its channel serves every call; --timeout bounds ListModels and GetModel too.</summary>
    public EcmtClient Client(ParseResult parse, Action<RetryEvent>? onRetry = null, string? apiKey = null) =>
        new(parse.GetValue(Server)!, new EcmtClientOptions
        {
            OnRetry = onRetry,
            DefaultTimeout = parse.GetValue(Timeout) is double seconds && seconds > 0 ? TimeSpan.FromSeconds(seconds) : null,
            ApiKey = apiKey ?? parse.GetValue(ApiKey),
            ClientCertificate = parse.GetValue(ClientCert) is { } cert ? EcmtClientOptions.LoadClientCertificate(Existing(cert, "--client-cert"), parse.GetValue(ClientKey) is { } key ? Existing(key, "--client-key") : null) : null,
            ServerCertificateAuthorities = parse.GetValue(CaCert) is { } ca ? EcmtClientOptions.LoadAuthorities(Existing(ca, "--ca-cert")) : null,
        });

    static string Existing(string path, string option) => File.Exists(path) ? path : throw new ArgumentException($"{option}: no such file '{path}'");

    /// <summary>The model named by --model, else the only ready model the server hosts.</summary>
    public async Task<ModelInfo> ResolveModelAsync(ParseResult parse, EcmtClient client, CancellationToken cancellationToken)
    {
        if (parse.GetValue(Model) is { Length: > 0 } name) return await client.GetModelAsync(name, cancellationToken);
        var models = await client.ListModelsAsync(cancellationToken);
        var ready = models.Where(m => m.Ready).ToArray();
        return ready.Length switch
        {
            1 => ready[0],
            0 => throw new ArgumentException($"the server has no ready model ({Names(models)}); name one with --model"),
            _ => throw new ArgumentException($"the server hosts several models ({Names(ready)}); choose one with --model"),
        };
    }

    static string Names(IEnumerable<ModelInfo> models) => models.Any() ? string.Join(", ", models.Select(m => m.Name)) : "none";

    /// <summary>Files as given, folders as their PNG and JPEG files (sorted by name); <see cref="ArgumentException"/> when a path is missing or nothing is found.</summary>
    public static IReadOnlyList<string> ImageFiles(IEnumerable<string> paths)
    {
        var files = new List<string>();
        foreach (var path in paths)
        {
            if (File.Exists(path)) files.Add(path);
            else if (Directory.Exists(path))
            {
                var found = Directory.EnumerateFiles(path)
                    .Where(f => Path.GetExtension(f).ToLowerInvariant() is ".png" or ".jpg" or ".jpeg")
                    .Order(StringComparer.Ordinal).ToArray();
                if (found.Length == 0) throw new ArgumentException($"no PNG or JPEG files in folder '{path}'");
                files.AddRange(found);
            }
            else throw new ArgumentException($"no such file or folder: '{path}'");
        }
        if (files.Count == 0) throw new ArgumentException("no images given");
        return files;
    }

    /// <summary>"confident" for <see cref="StopReason.Confident"/>, "max_steps" for <see cref="StopReason.MaxSteps"/>.</summary>
    public static string ReasonName(StopReason reason) => reason switch
    {
        StopReason.MaxSteps => "max_steps",
        StopReason.Confident => "confident",
        StopReason.Stable => "stable",
        StopReason.Policy => "policy",
        _ => "none",
    };
}

/// <summary>Spectre consoles over the writers a command was given: styled on a terminal, plain text otherwise (files, pipes, tests).</summary>
static class Consoles
{
    public static bool IsTerminal(TextWriter writer) =>
        (ReferenceEquals(writer, Console.Out) && !Console.IsOutputRedirected) || (ReferenceEquals(writer, Console.Error) && !Console.IsErrorRedirected);

    public static IAnsiConsole For(TextWriter writer)
    {
        bool terminal = IsTerminal(writer);
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        // Redirected output has no width of its own; wide enough that a table does not wrap file names.
        if (!terminal) console.Profile.Width = 160;
        return console;
    }

    /// <summary>One line on standard error for a failure the user must act on: no stack trace.</summary>
    public static int Fail(ParseResult parse, string message, int code)
    {
        parse.InvocationConfiguration.Error.WriteLine($"ecmt {parse.CommandResult.Command.Name}: {message}");
        return code;
    }
}
