using System.Security.Claims;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Encodings.Web;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Authorization.Policy;
using Microsoft.Extensions.Options;

namespace Ecmt.Server.Access;

/// <summary>
/// The authentication scheme of every protocol (ecmt.v1, the Open Inference Protocol over gRPC and REST, the page):
/// an API key as <c>authorization: Bearer &lt;key&gt;</c> (gRPC metadata or HTTP header), else a client certificate
/// presented in the TLS handshake, checked against Ecmt:Tls:ClientCaFile here (so a certificate from another CA is
/// UNAUTHENTICATED with a reason, not a failed handshake). The caller must be in the access file.
/// </summary>
sealed class CallerAuthenticationHandler(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder,
    AccessFile file, ClientCertificates certificates) : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    public const string SchemeName = "ecmt";
    public const string ModelClaim = "ecmt:model";
    public const string MethodClaim = "ecmt:credential";
    /// <summary>HttpContext.Items key of why authentication failed, for the refusal's message.</summary>
    internal const string FailureItem = "ecmt:authentication-failure";

    protected override Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        var result = Authenticate();
        if (result.Failure is { } failure) Context.Items[FailureItem] = failure.Message;
        return Task.FromResult(result);
    }

    AuthenticateResult Authenticate()
    {
        var list = file.Current;
        string? header = Request.Headers.Authorization;
        if (!string.IsNullOrEmpty(header))
        {
            if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
                return AuthenticateResult.Fail("the authorization header is not 'Bearer <key>'");
            var caller = list.FindKey(header["Bearer ".Length..].Trim());
            return caller is null ? AuthenticateResult.Fail("the API key is not valid") : Success(caller, "key");
        }
        if (Context.Connection.ClientCertificate is { } certificate)
        {
            if (certificates.Problem(certificate) is { } problem)
                return AuthenticateResult.Fail($"the client certificate is not accepted: {problem}");
            var caller = list.FindSubject(certificate.Subject);
            return caller is null
                ? AuthenticateResult.Fail($"the client certificate's subject '{certificate.Subject}' is not a caller of this server")
                : Success(caller, "certificate");
        }
        return AuthenticateResult.NoResult();
    }

    AuthenticateResult Success(CallerEntry caller, string credential)
    {
        var identity = new ClaimsIdentity(SchemeName);
        identity.AddClaim(new Claim(ClaimTypes.Name, caller.Name));
        identity.AddClaim(new Claim(MethodClaim, credential));
        foreach (var model in caller.Models) identity.AddClaim(new Claim(ModelClaim, model));
        return AuthenticateResult.Success(new AuthenticationTicket(new ClaimsPrincipal(identity), SchemeName));
    }
}

/// <summary>The CA that client certificates must chain to (Ecmt:Tls:ClientCaFile, PEM, one or more certificates).</summary>
sealed class ClientCertificates
{
    static readonly Oid ClientAuthentication = new("1.3.6.1.5.5.7.3.2");
    readonly X509Certificate2Collection _authorities = [];

    public ClientCertificates(IOptions<EcmtOptions> options)
    {
        if (options.Value.Tls.ClientCaFile is { Length: > 0 } path) _authorities.ImportFromPemFile(path);
    }

    public bool Configured => _authorities.Count > 0;

    /// <summary>Null when the certificate chains to the configured CA, is in its validity period and allows client authentication; else why not.</summary>
    public string? Problem(X509Certificate2 certificate)
    {
        if (!Configured) return "this server takes no client certificates (Ecmt:Tls:ClientCaFile is unset)";
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(_authorities);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(ClientAuthentication);
        if (chain.Build(certificate)) return null;
        return string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).DefaultIfEmpty("it does not chain to the configured CA"));
    }
}

/// <summary>
/// Answers a refused call in its protocol's shape: gRPC (content-type application/grpc) gets a trailers-only response
/// with UNAUTHENTICATED (16) or PERMISSION_DENIED (7) and the reason; REST gets 401/403 with <c>{"error": "..."}</c>
/// and <c>WWW-Authenticate: Bearer</c>.
/// </summary>
sealed class AccessResultHandler : IAuthorizationMiddlewareResultHandler
{
    readonly AuthorizationMiddlewareResultHandler _default = new();

    public async Task HandleAsync(RequestDelegate next, HttpContext context, AuthorizationPolicy policy, PolicyAuthorizationResult result)
    {
        if (result.Succeeded)
        {
            await _default.HandleAsync(next, context, policy, result);
            return;
        }
        bool challenged = result.Challenged;
        string reason = challenged
            ? context.Items[CallerAuthenticationHandler.FailureItem] as string
                ?? "no credential: send 'authorization: Bearer <key>' or a client certificate"
            : "this caller may not use this endpoint";
        var code = challenged ? Grpc.Core.StatusCode.Unauthenticated : Grpc.Core.StatusCode.PermissionDenied;
        await Refuse(context, code, reason);
    }

    /// <summary>Writes a refusal (authentication, authorization) as gRPC's trailers-only response or REST's error JSON.</summary>
    internal static async Task Refuse(HttpContext context, Grpc.Core.StatusCode code, string reason)
    {
        if (code == Grpc.Core.StatusCode.Unauthenticated) context.Response.Headers.WWWAuthenticate = "Bearer";
        if (context.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) == true)
        {
            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = "application/grpc";
            context.Response.Headers["grpc-status"] = ((int)code).ToString(System.Globalization.CultureInfo.InvariantCulture);
            context.Response.Headers["grpc-message"] = Uri.EscapeDataString(reason);
            return;
        }
        context.RequestServices.GetRequiredService<ServerMetrics>().Error(
            $"{context.Request.Method} {(context.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText ?? context.Request.Path.Value}", code);
        context.Response.StatusCode = Oip.RestApi.HttpStatusOf(code);
        await context.Response.WriteAsJsonAsync(new Oip.ErrorJson(reason), Oip.RestJson.Options, context.RequestAborted);
    }
}
