using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using JobRunner.Kubernetes.Client;
using Microsoft.Extensions.Logging;
using YamlDotNet.RepresentationModel;

namespace JobRunner.Kubernetes.Connection;

/// <summary>Where the API server is and how to authenticate to it: resolved from the options, a kubeconfig, or the pod's service account.</summary>
internal sealed class KubernetesConnection
{
    public const string ServiceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount";

    public required Uri Server { get; init; }

    public required string Description { get; init; }

    public X509Certificate2Collection? CertificateAuthority { get; init; }

    public X509Certificate2? ClientCertificate { get; init; }

    public bool SkipTlsVerify { get; init; }

    public string? TlsServerName { get; init; }

    public ITokenSource? Token { get; init; }

    public (string User, string Password)? Basic { get; init; }

    /// <summary>Resolves the connection the options ask for; throws <see cref="KubeconfigException"/> naming the problem.</summary>
    public static KubernetesConnection Resolve(KubernetesEngineOptions options, Func<string, string?> environment, string serviceAccountDirectory = ServiceAccountDirectory)
    {
        if (options.Server is { } server)
        {
            return new KubernetesConnection
            {
                Server = server,
                Description = $"server {server}",
                Token = options.AccessToken is { } token ? new StaticToken(token) : null,
            };
        }

        if (options.InCluster || (options.KubeconfigPath is null && environment("KUBECONFIG") is null && environment("KUBERNETES_SERVICE_HOST") is not null))
        {
            return InCluster(options, environment, serviceAccountDirectory);
        }

        if (options.KubeconfigPath is { } path)
        {
            return FromKubeconfig(Kubeconfig.Load(path), options.Context);
        }

        // KUBECONFIG may list several files: merged as kubectl merges them.
        if (environment("KUBECONFIG")?.Split(System.IO.Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) is { Length: > 0 } paths)
        {
            return FromKubeconfig(Kubeconfig.LoadMerged(paths), options.Context);
        }

        return FromKubeconfig(Kubeconfig.Load(System.IO.Path.Combine(environment("HOME") ?? "~", ".kube", "config")), options.Context);
    }

    public static KubernetesConnection InCluster(KubernetesEngineOptions options, Func<string, string?> environment, string directory)
    {
        var host = environment("KUBERNETES_SERVICE_HOST");
        var port = environment("KUBERNETES_SERVICE_PORT");
        if (string.IsNullOrEmpty(host) || string.IsNullOrEmpty(port))
        {
            throw new KubeconfigException("In-cluster configuration needs KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, which Kubernetes sets in every pod. Outside a cluster, use a kubeconfig (KubeconfigPath) or Server.");
        }

        var tokenPath = Path.Combine(directory, "token");
        var caPath = Path.Combine(directory, "ca.crt");
        if (!File.Exists(tokenPath))
        {
            throw new KubeconfigException($"In-cluster configuration: the service-account token '{tokenPath}' does not exist. Mount the service account token (automountServiceAccountToken: true).");
        }

        var ca = new X509Certificate2Collection();
        if (File.Exists(caPath))
        {
            ca.ImportFromPemFile(caPath);
        }

        var authority = host.Contains(':', StringComparison.Ordinal) ? $"[{host}]" : host;
        return new KubernetesConnection
        {
            Server = new Uri($"https://{authority}:{port}"),
            Description = "in-cluster service account",
            CertificateAuthority = ca.Count > 0 ? ca : null,
            Token = new FileToken(tokenPath, options.TokenRefreshInterval),
        };
    }

    public static KubernetesConnection FromKubeconfig(Kubeconfig config, string? context)
    {
        var (name, cluster, user) = config.Select(context);
        var where = $"context '{name}' of kubeconfig '{config.Path}'";
        // Relative paths are relative to the file that defines the entry (with KUBECONFIG, the files may differ).
        string Resolve(YamlMappingNode entry, string file)
            => Path.IsPathRooted(file) ? file : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(config.FileOf(entry))) ?? ".", file);

        var serverText = Kubeconfig.Scalar(cluster, "server");
        if (string.IsNullOrEmpty(serverText) || !Uri.TryCreate(serverText, UriKind.Absolute, out var server))
        {
            throw new KubeconfigException($"The cluster of {where} has no valid 'server' URL ('{serverText}'). Set it to the API server, e.g. https://host:6443.");
        }

        try
        {
            X509Certificate2Collection? ca = null;
            if (Kubeconfig.Scalar(cluster, "certificate-authority-data") is { Length: > 0 } caData)
            {
                ca = [];
                ca.ImportFromPem(Encoding.UTF8.GetString(Convert.FromBase64String(caData)));
            }
            else if (Kubeconfig.Scalar(cluster, "certificate-authority") is { Length: > 0 } caFile)
            {
                ca = [];
                ca.ImportFromPemFile(Resolve(cluster, caFile));
            }

            X509Certificate2? clientCertificate = null;
            var certData = Kubeconfig.Scalar(user, "client-certificate-data");
            var keyData = Kubeconfig.Scalar(user, "client-key-data");
            var certFile = Kubeconfig.Scalar(user, "client-certificate");
            var keyFile = Kubeconfig.Scalar(user, "client-key");
            if (certData is not null || certFile is not null)
            {
                var certPem = certData is not null ? Encoding.UTF8.GetString(Convert.FromBase64String(certData)) : File.ReadAllText(Resolve(user, certFile!));
                var keyPem = keyData is not null ? Encoding.UTF8.GetString(Convert.FromBase64String(keyData))
                    : keyFile is not null ? File.ReadAllText(Resolve(user, keyFile))
                    : throw new KubeconfigException($"The user of {where} has a client certificate but no client-key(-data). Add the key.");
                clientCertificate = X509Certificate2.CreateFromPem(certPem, keyPem);
            }

            ITokenSource? token = null;
            if (Kubeconfig.Scalar(user, "token") is { Length: > 0 } staticToken)
            {
                token = new StaticToken(staticToken);
            }
            else if (Kubeconfig.Scalar(user, "tokenFile") is { Length: > 0 } tokenFile)
            {
                token = new FileToken(Resolve(user, tokenFile), TimeSpan.FromMinutes(1));
            }
            else if (Kubeconfig.Child(user, "exec") is YamlMappingNode exec)
            {
                token = ExecToken.From(exec, where, Path.GetDirectoryName(Path.GetFullPath(config.FileOf(user))) ?? ".");
            }
            else if (Kubeconfig.Child(user, "auth-provider") is YamlMappingNode provider)
            {
                throw new KubeconfigException($"The user of {where} uses auth-provider '{Kubeconfig.Scalar(provider, "name")}', which JobRunner does not support. Use an exec credential plugin (client.authentication.k8s.io) instead.");
            }

            (string, string)? basic = Kubeconfig.Scalar(user, "username") is { } username ? (username, Kubeconfig.Scalar(user, "password") ?? "") : null;
            return new KubernetesConnection
            {
                Server = server,
                Description = where,
                CertificateAuthority = ca,
                ClientCertificate = clientCertificate,
                SkipTlsVerify = string.Equals(Kubeconfig.Scalar(cluster, "insecure-skip-tls-verify"), "true", StringComparison.OrdinalIgnoreCase),
                TlsServerName = Kubeconfig.Scalar(cluster, "tls-server-name"),
                Token = token,
                Basic = basic,
            };
        }
        catch (Exception e) when (e is FormatException or System.Security.Cryptography.CryptographicException or IOException or UnauthorizedAccessException)
        {
            throw new KubeconfigException($"The credentials of {where} cannot be loaded: {e.Message} Check certificate-authority(-data), client-certificate(-data) and client-key(-data).");
        }
    }

    /// <summary>How long an HTTP/2 connection may be silent before it is pinged.</summary>
    internal static readonly TimeSpan KeepAlivePingDelay = TimeSpan.FromSeconds(30);

    /// <summary>How long a ping may go unanswered before the HTTP/2 connection counts as dead and is closed.</summary>
    internal static readonly TimeSpan KeepAlivePingTimeout = TimeSpan.FromSeconds(15);

    /// <summary>How long a TCP connection may be idle before the kernel probes its peer (SO_KEEPALIVE).</summary>
    internal static readonly TimeSpan TcpKeepAliveTime = TimeSpan.FromSeconds(30);

    /// <summary>How long the kernel waits between two unanswered keep-alive probes.</summary>
    internal static readonly TimeSpan TcpKeepAliveInterval = TimeSpan.FromSeconds(10);

    /// <summary>How many keep-alive probes may go unanswered before the kernel closes the connection.</summary>
    internal const int TcpKeepAliveRetryCount = 3;

    /// <summary>How many connections the plain requests may open at once (on HTTP/1.1; HTTP/2 multiplexes them).</summary>
    public const int RequestConnections = 64;

    /// <param name="time">The clock.</param>
    /// <param name="logger">The logger.</param>
    /// <param name="maxConnectionsPerServer">
    /// The pool's connection limit: <see cref="RequestConnections"/> for plain requests; <see cref="int.MaxValue"/> for
    /// watches and log streams, which hold a connection each for as long as they run (their number is bounded by the
    /// attempts running), so that they never wait for one another nor take the plain requests' connections.
    /// </param>
    public HttpMessageHandler CreateHandler(TimeProvider time, ILogger logger, int maxConnectionsPerServer = RequestConnections)
    {
        var sockets = new SocketsHttpHandler
        {
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(2),
            MaxConnectionsPerServer = maxConnectionsPerServer,
            EnableMultipleHttp2Connections = true,
            ConnectTimeout = TimeSpan.FromSeconds(30),

            // On HTTP/2 every request and stream of the pool shares one connection: one whose peer vanished without a
            // reset (a node or load balancer gone) would be reused, watch reconnects included, until the kernel gives
            // up (~15 minutes). Pings find it dead within KeepAlivePingDelay + KeepAlivePingTimeout. (HTTP/1.1 ignores them.)
            KeepAlivePingDelay = KeepAlivePingDelay,
            KeepAlivePingTimeout = KeepAlivePingTimeout,
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,

            // HTTP/1.1 has no pings: a followed log (no header limit, as a quiet container sends nothing) or a watch on a
            // connection whose peer vanished would wait forever. TCP keep-alive makes the kernel find such a connection
            // dead after TcpKeepAliveTime + TcpKeepAliveRetryCount * TcpKeepAliveInterval (about 60 s) of silence.
            ConnectCallback = static (context, cancellationToken) => ConnectAsync(context.DnsEndPoint, cancellationToken),
        };
        if (Server.Scheme == Uri.UriSchemeHttps)
        {
            var ssl = new SslClientAuthenticationOptions { TargetHost = TlsServerName ?? Server.IdnHost };
            if (ClientCertificate is not null)
            {
                ssl.ClientCertificates = [ClientCertificate];
            }

            if (SkipTlsVerify)
            {
                // insecure-skip-tls-verify: true in the kubeconfig is the user's explicit choice.
#pragma warning disable CA5359
                ssl.RemoteCertificateValidationCallback = static (_, _, _, _) => true;
#pragma warning restore CA5359
            }
            else if (CertificateAuthority is { } authority)
            {
                // SslStream builds a chain of its own before the callback, with downloads allowed by default: it fetched
                // the issuer a server's certificate names (AIA), and Validate then took the downloaded certificate as one
                // the server sent. Without downloads the presented chain holds only what the server sent.
                ssl.CertificateChainPolicy = new X509ChainPolicy { DisableCertificateDownloads = true, RevocationMode = X509RevocationMode.NoCheck };
                ssl.RemoteCertificateValidationCallback = (_, certificate, chain, errors) => Validate(certificate, chain, errors, authority);
            }

            sockets.SslOptions = ssl;
        }

        return new AuthHandler(this, time, logger) { InnerHandler = sockets };
    }

    /// <summary>Opens a TCP connection as SocketsHttpHandler does (dual-mode, no Nagle), with keep-alive probes on.</summary>
    internal static async ValueTask<Stream> ConnectAsync(DnsEndPoint endPoint, CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            try
            {
                socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, (int)TcpKeepAliveTime.TotalSeconds);
                socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, (int)TcpKeepAliveInterval.TotalSeconds);
                socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, TcpKeepAliveRetryCount);
            }
            catch (Exception e) when (e is SocketException or PlatformNotSupportedException)
            {
                // A platform without the tuning options: keep-alive stays on with the system's timings.
            }

            await socket.ConnectAsync(endPoint, cancellationToken).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Validates the server's certificate against the cluster's CA bundle as client-go does: every certificate of the
    /// bundle is trusted (self-signed roots as trust roots; the others, intermediates, also link the chain), and the
    /// intermediates the server sent complete it. A chain that reaches an intermediate of the bundle whose root the
    /// bundle lacks is trusted too (Go's certificate pools anchor there), if nothing but that missing root is wrong.
    /// </summary>
    internal static bool Validate(X509Certificate? certificate, X509Chain? presented, SslPolicyErrors errors, X509Certificate2Collection authority)
    {
        if (certificate is null || (errors & (SslPolicyErrors.RemoteCertificateNameMismatch | SslPolicyErrors.RemoteCertificateNotAvailable)) != 0)
        {
            return false;
        }

        using var chain = new X509Chain();
        var policy = chain.ChainPolicy;
        policy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        policy.RevocationMode = X509RevocationMode.NoCheck;

        // A server certificate: client-go (crypto/tls) requires the serverAuth usage along the chain. Without it, a
        // client-auth-only certificate the cluster CA issued (kubernetes.io/kube-apiserver-client keeps the SANs asked
        // for) naming the API server would be accepted.
        policy.ApplicationPolicy.Add(new System.Security.Cryptography.Oid(ServerAuthentication));

        // Only what the bundle and the server give: no issuer is fetched over the network during the handshake (Go never does).
        policy.DisableCertificateDownloads = true;
        foreach (var ca in authority)
        {
            (IsSelfIssued(ca) ? policy.CustomTrustStore : policy.ExtraStore).Add(ca);
        }

        if (presented is not null)
        {
            // What the server sent after its certificate (SslStream puts it in the chain it built).
            foreach (var sent in presented.ChainPolicy.ExtraStore)
            {
                AddSent(sent);
            }

            for (var i = 1; i < presented.ChainElements.Count; i++)
            {
                AddSent(presented.ChainElements[i].Certificate);
            }
        }

        using var leaf = new X509Certificate2(certificate);
        try
        {
            return chain.Build(leaf) || ReachesTheBundle(chain, authority);
        }
        finally
        {
            // Each element holds a certificate of its own, which X509Chain.Dispose leaves to the caller.
            foreach (var element in chain.ChainElements)
            {
                element.Certificate.Dispose();
            }
        }

        // A certificate the server sent with the name and key of a currently valid one of the bundle (an intermediate
        // re-issued or cross-signed by another CA) is left out: it would link the same certificates, and a chain built
        // through it would not reach the bundle's copy, where client-go anchors (which of the two a chain builder picks
        // is its own choice).
        void AddSent(X509Certificate2 sent)
        {
            foreach (var ca in authority)
            {
                if (ca.NotBefore <= policy.VerificationTime && policy.VerificationTime <= ca.NotAfter
                    && ca.SubjectName.RawData.AsSpan().SequenceEqual(sent.SubjectName.RawData)
                    && ca.PublicKey.ExportSubjectPublicKeyInfo().AsSpan().SequenceEqual(sent.PublicKey.ExportSubjectPublicKeyInfo()))
                {
                    return;
                }
            }

            policy.ExtraStore.Add(sent);
        }
    }

    /// <summary>
    /// Whether the chain, which does not end at a trusted root, reaches a certificate of the bundle with nothing wrong up
    /// to it but the missing root (<see cref="X509ChainStatusFlags.UntrustedRoot"/>, <see cref="X509ChainStatusFlags.PartialChain"/>).
    /// </summary>
    private static bool ReachesTheBundle(X509Chain chain, X509Certificate2Collection authority)
    {
        const X509ChainStatusFlags MissingRoot = X509ChainStatusFlags.UntrustedRoot | X509ChainStatusFlags.PartialChain;
        var elements = chain.ChainElements;
        for (var k = 0; k < elements.Count; k++)
        {
            if (Flags(elements[k].ChainElementStatus) is var flags && (flags & ~MissingRoot) != 0)
            {
                return false;
            }

            if (!InBundle(elements[k].Certificate))
            {
                continue;
            }

            // Anchored at element k: what is wrong above it does not matter, anything else the chain reports does.
            var above = X509ChainStatusFlags.NoError;
            for (var i = k + 1; i < elements.Count; i++)
            {
                above |= Flags(elements[i].ChainElementStatus);
            }

            return (Flags(chain.ChainStatus) & ~(MissingRoot | above)) == 0;
        }

        return false;

        bool InBundle(X509Certificate2 certificate)
        {
            foreach (var ca in authority)
            {
                if (ca.RawDataMemory.Span.SequenceEqual(certificate.RawDataMemory.Span))
                {
                    return true;
                }
            }

            return false;
        }

        static X509ChainStatusFlags Flags(X509ChainStatus[] statuses)
        {
            var flags = X509ChainStatusFlags.NoError;
            foreach (var status in statuses)
            {
                flags |= status.Status;
            }

            return flags;
        }
    }

    /// <summary>id-kp-serverAuth, the extended key usage of a TLS server's certificate.</summary>
    private const string ServerAuthentication = "1.3.6.1.5.5.7.3.1";

    private static bool IsSelfIssued(X509Certificate2 certificate)
        => certificate.SubjectName.RawData.AsSpan().SequenceEqual(certificate.IssuerName.RawData);

    /// <summary>Adds the bearer token (or basic credentials) to every request.</summary>
    private sealed class AuthHandler(KubernetesConnection connection, TimeProvider time, ILogger logger) : DelegatingHandler
    {
        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            if (connection.Token is { } source)
            {
                var token = await source.GetTokenAsync(time, logger, cancellationToken).ConfigureAwait(false);
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
                var response = await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
                if (response.StatusCode != System.Net.HttpStatusCode.Unauthorized || !source.Invalidate(token))
                {
                    return response;
                }

                // Refused (revoked, or expired before the time the plugin gave, or the plugin gave none): as client-go
                // does, get a fresh token and try once more. The bodies sent here are buffered, so they can be sent again.
                var fresh = await source.GetTokenAsync(time, logger, cancellationToken).ConfigureAwait(false);
                if (fresh == token)
                {
                    return response;
                }

                response.Dispose();
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", fresh);
                return await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
            }

            if (connection.Basic is { } basic)
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{basic.User}:{basic.Password}")));
            }

            return await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
        }
    }
}

/// <summary>Supplies a bearer token, refreshing it as needed.</summary>
internal interface ITokenSource
{
    ValueTask<string> GetTokenAsync(TimeProvider time, ILogger logger, CancellationToken cancellationToken);

    /// <summary>Forgets <paramref name="token"/>, which the server refused (401), if it is the one kept.</summary>
    /// <returns>Whether the next <see cref="GetTokenAsync"/> gets another one (a static token cannot).</returns>
    bool Invalidate(string token);
}

internal sealed class StaticToken(string token) : ITokenSource
{
    public ValueTask<string> GetTokenAsync(TimeProvider time, ILogger logger, CancellationToken cancellationToken) => ValueTask.FromResult(token);

    public bool Invalidate(string token) => false;
}

/// <summary>A token read from a file and read again every <paramref name="refresh"/> (service-account tokens are rotated on disk).</summary>
internal sealed class FileToken(string path, TimeSpan refresh) : ITokenSource
{
    private string? _token;
    private DateTimeOffset _readAt;

    public string Path => path;

    public async ValueTask<string> GetTokenAsync(TimeProvider time, ILogger logger, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        if (_token is { } token && now - _readAt < refresh)
        {
            return token;
        }

        token = (await File.ReadAllTextAsync(path, cancellationToken).ConfigureAwait(false)).Trim();
        _token = token;
        _readAt = now;
        return token;
    }

    public bool Invalidate(string token)
    {
        // Read the file again: the kubelet may have rotated it since.
        Interlocked.CompareExchange(ref _token, null, token);
        return true;
    }
}

/// <summary>
/// A client-go exec credential plugin: runs the command with <c>KUBERNETES_EXEC_INFO</c> set to an ExecCredential
/// (kind <c>ExecCredential</c>, spec.interactive false), reads the ExecCredential it prints, and keeps the token until
/// its <c>expirationTimestamp</c>.
/// </summary>
internal sealed class ExecToken : ITokenSource, IAsyncDisposable
{
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stop = new(); // cancelled on dispose: a run in flight is killed
    private bool _disposed;
    private string? _token;
    private DateTimeOffset? _expires;
    private Task<string>? _running; // the plugin's run that the callers wait for, if any

    public bool Invalidate(string token)
    {
        // The next request runs the plugin again (client-go does the same on a 401).
        lock (_lock)
        {
            if (_token == token)
            {
                _token = null;
            }
        }

        return true;
    }

    public required string Command { get; init; }

    public required IReadOnlyList<string> Args { get; init; }

    public required IReadOnlyList<(string Name, string Value)> Env { get; init; }

    public required string ApiVersion { get; init; }

    public required string Where { get; init; }

    /// <param name="exec">The user's <c>exec</c> entry.</param>
    /// <param name="where">The context and kubeconfig, for messages.</param>
    /// <param name="directory">The directory of the kubeconfig file that defines the user.</param>
    public static ExecToken From(YamlMappingNode exec, string where, string directory)
    {
        var command = Kubeconfig.Scalar(exec, "command");
        if (string.IsNullOrEmpty(command))
        {
            throw new KubeconfigException($"The exec credential plugin of {where} has no 'command'. Set it to the plugin executable.");
        }

        // As client-go: a relative command with a path separator (./bin/plugin) is relative to the kubeconfig file that
        // defines it; a bare name is looked up on PATH.
        if (!Path.IsPathRooted(command) && command.Contains(Path.DirectorySeparatorChar, StringComparison.Ordinal))
        {
            command = Path.GetFullPath(Path.Combine(directory, command));
        }

        var apiVersion = Kubeconfig.Scalar(exec, "apiVersion") ?? "client.authentication.k8s.io/v1";
        var args = Kubeconfig.Child(exec, "args") is YamlSequenceNode a ? a.OfType<YamlScalarNode>().Select(static s => s.Value ?? "").ToList() : [];
        var env = Kubeconfig.Child(exec, "env") is YamlSequenceNode e
            ? e.OfType<YamlMappingNode>().Select(static m => (Kubeconfig.Scalar(m, "name") ?? "", Kubeconfig.Scalar(m, "value") ?? "")).ToList()
            : [];
        return new ExecToken { Command = command, Args = args, Env = env, ApiVersion = apiVersion, Where = where };
    }

    /// <summary>
    /// The token kept, or the one the plugin's run gives: one run at a time, shared by the callers. A caller's
    /// cancellation (its request's time limit) ends only its own wait: the run goes on, under <see cref="TimeLimit"/>
    /// alone, for the others and the next caller.
    /// </summary>
    public async ValueTask<string> GetTokenAsync(TimeProvider time, ILogger logger, CancellationToken cancellationToken)
    {
        Task<string> running;
        lock (_lock)
        {
            if (_token is { } token && (_expires is null || _expires > time.GetUtcNow() + TimeSpan.FromSeconds(10)))
            {
                return token;
            }

            ObjectDisposedException.ThrowIf(_disposed, this);
            running = _running ?? Start(time);
        }

        return await running.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Stops for good (the host stops): a run in flight is killed with its descendants, and waited for; its callers get
    /// a <see cref="KubeconfigException"/>, later callers an <see cref="ObjectDisposedException"/>. A process the plugin
    /// started whose parent has exited (re-parented, e.g. a daemon) is no longer its descendant and is not reached.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        Task<string>? running;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            running = _running;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        if (running is not null)
        {
            await ((Task)running).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        _stop.Dispose();
    }

    /// <summary>Starts a run. Call under the lock.</summary>
    private Task<string> Start(TimeProvider time)
    {
        // Started on the pool, so that it cannot finish (and clear _running) before it is stored: that waits for the lock.
        var running = Task.Run(() => RefreshAsync(time), CancellationToken.None);
        _running = running;

        // Every caller may have given up waiting: its failure is then observed here.
        _ = running.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return running;
    }

    private async Task<string> RefreshAsync(TimeProvider time)
    {
        try
        {
            var credential = await RunAsync(time).ConfigureAwait(false);
            var token = credential.Status?.Token ?? throw new KubeconfigException($"The exec credential plugin '{Command}' of {Where} returned no status.token.");
            lock (_lock)
            {
                _token = token;
                _expires = credential.Status.ExpirationTimestamp;
            }

            return token;
        }
        finally
        {
            lock (_lock)
            {
                _running = null;
            }
        }
    }

    /// <summary>How long the plugin may run (client-go has no limit; a plugin that hangs would hold every request forever).</summary>
    internal static readonly TimeSpan TimeLimit = TimeSpan.FromSeconds(60);

    private async Task<ExecCredential> RunAsync(TimeProvider time)
    {
        var info = new ProcessStartInfo(Command) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in Args)
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var (name, value) in Env)
        {
            info.Environment[name] = value;
        }

        var request = new ExecCredential { ApiVersion = ApiVersion, Spec = new ExecCredentialSpec { Interactive = false } };
        info.Environment["KUBERNETES_EXEC_INFO"] = JsonSerializer.Serialize(request, KubeJson.Default.ExecCredential);
        Process process;
        try
        {
            // Started under the lock that DisposeAsync sets the flag under: a run queued before the disposal and reached
            // after it launches nothing; one started before it is killed by the cancellation.
            lock (_lock)
            {
                if (_disposed)
                {
                    throw new KubeconfigException($"The exec credential plugin '{Command}' of {Where} was not started: the Kubernetes engine was disposed (the host stops).");
                }

                process = Process.Start(info) ?? throw new KubeconfigException($"The exec credential plugin '{Command}' of {Where} did not start.");
            }
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new KubeconfigException($"The exec credential plugin '{Command}' of {Where} cannot run: {e.Message}. Install it or fix 'command'.");
        }

        using (process)
        {
            // Its own limit and the disposal only: the callers' tokens end their waits, not the run.
            using var timeLimit = new CancellationTokenSource(TimeLimit, time);
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(timeLimit.Token, _stop.Token);
            var output = process.StandardOutput.ReadToEndAsync(limit.Token);
            var error = process.StandardError.ReadToEndAsync(limit.Token);
            string text;
            try
            {
                await process.WaitForExitAsync(limit.Token).ConfigureAwait(false);
                if (process.ExitCode != 0)
                {
                    throw new KubeconfigException($"The exec credential plugin '{Command}' of {Where} exited with code {process.ExitCode}: {(await error.ConfigureAwait(false)).Trim()}");
                }

                // A process it started may still hold the output open: the limit covers the read too.
                text = await output.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // Timed out, or the host stops: the plugin (and whatever it started) must not outlive either.
                Kill(process);
                throw _stop.IsCancellationRequested
                    ? new KubeconfigException($"The exec credential plugin '{Command}' of {Where} was killed: the Kubernetes engine was disposed (the host stops) while it ran.")
                    : new KubeconfigException($"The exec credential plugin '{Command}' of {Where} did not finish within {TimeLimit.TotalSeconds:0} s; it was killed.");
            }

            try
            {
                var credential = JsonSerializer.Deserialize(text, KubeJson.Default.ExecCredential);
                return credential is { Kind: "ExecCredential" } ? credential : throw new KubeconfigException($"The exec credential plugin '{Command}' of {Where} did not print an ExecCredential.");
            }
            catch (JsonException e)
            {
                throw new KubeconfigException($"The exec credential plugin '{Command}' of {Where} printed invalid JSON: {e.Message}");
            }
        }
    }

    private static void Kill(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception or NotSupportedException)
        {
            // It exited meanwhile, or cannot be killed: nothing more to do.
        }
    }
}
