using System.Text;
using JobRunner.Kubernetes.Client;
using JobRunner.Kubernetes.Connection;
using JobRunner.Kubernetes.Engine;
using JobRunner.Kubernetes.Testing;
using JobRunner.Kubernetes.Tests.Support;
using JobRunner.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace JobRunner.Kubernetes.Tests.Connection;

/// <summary>Every way to reach a cluster: kubeconfig (the kubernetes-client/csharp fixtures), exec plugins, in-cluster, a direct server.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class ConnectionTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("jobrunner-k8s-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string FixturePath(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "kubeconfig", name);

    /// <summary>Copies a fixture next to the assets/ files it refers to (made from the PEM data embedded in the main fixture).</summary>
    private string WithAssets(string fixture)
    {
        var main = Kubeconfig.Load(FixturePath("csharp-client.kubeconfig.yml"));
        var (_, cluster, user) = main.Select("victorian-context");
        Directory.CreateDirectory(Path.Combine(_dir, "assets"));
        File.WriteAllBytes(Path.Combine(_dir, "assets", "ca.crt"), Convert.FromBase64String(Kubeconfig.Scalar(cluster, "certificate-authority-data")!));
        File.WriteAllBytes(Path.Combine(_dir, "assets", "client.crt"), Convert.FromBase64String(Kubeconfig.Scalar(user, "client-certificate-data")!));
        File.WriteAllBytes(Path.Combine(_dir, "assets", "client.key"), Convert.FromBase64String(Kubeconfig.Scalar(user, "client-key-data")!));
        var path = Path.Combine(_dir, fixture);
        File.Copy(FixturePath(fixture), path);
        return path;
    }

    private static KubernetesConnection Resolve(KubernetesEngineOptions options, Dictionary<string, string>? env = null, string? serviceAccount = null)
        => KubernetesConnection.Resolve(options, name => env?.GetValueOrDefault(name), serviceAccount ?? KubernetesConnection.ServiceAccountDirectory);

    [Fact]
    public void Kubeconfig_CurrentContext_WithFileCertificates()
    {
        var connection = Resolve(new KubernetesEngineOptions { KubeconfigPath = WithAssets("csharp-client.kubeconfig.yml") });

        Assert.Equal(new Uri("https://horse.org:4443"), connection.Server);
        Assert.Single(connection.CertificateAuthority!);
        Assert.True(connection.ClientCertificate!.HasPrivateKey);
        Assert.Contains("context 'federal-context'", connection.Description, StringComparison.Ordinal);
    }

    [Fact]
    public void Kubeconfig_NamedContext_WithEmbeddedCertificateData()
    {
        var connection = Resolve(new KubernetesEngineOptions { KubeconfigPath = FixturePath("csharp-client.kubeconfig.yml"), Context = "victorian-context" });

        Assert.Equal(new Uri("https://llama.org:443"), connection.Server);
        Assert.Single(connection.CertificateAuthority!);
        Assert.True(connection.ClientCertificate!.HasPrivateKey);
        Assert.Null(connection.Token);
    }

    [Fact]
    public async Task Kubeconfig_TokenAndSkipTls()
    {
        var connection = Resolve(new KubernetesEngineOptions { KubeconfigPath = FixturePath("csharp-client.kubeconfig.yml"), Context = "queen-anne-context" });

        Assert.True(connection.SkipTlsVerify);
        Assert.Equal("black-token", await connection.Token!.GetTokenAsync(TimeProvider.System, NullLogger.Instance, CancellationToken.None));
    }

    [Fact]
    public void Kubeconfig_TlsServerNameBasicAuthAndNoCredentials()
    {
        var servername = Resolve(new KubernetesEngineOptions { KubeconfigPath = FixturePath("csharp-client.kubeconfig.tls-servername.yml") });
        var basic = Resolve(new KubernetesEngineOptions { KubeconfigPath = WithAssets("csharp-client.kubeconfig.user-pass.yml") });
        var none = Resolve(new KubernetesEngineOptions { KubeconfigPath = WithAssets("csharp-client.kubeconfig.no-credentials.yml") });
        var extra = Resolve(new KubernetesEngineOptions { KubeconfigPath = WithAssets("csharp-client.kubeconfig.additional-properties.yml") });

        Assert.Equal("pony", servername.TlsServerName);
        Assert.Equal(("admin", "secret"), basic.Basic);
        Assert.Null(none.Token);
        Assert.Null(none.Basic);
        Assert.Null(none.ClientCertificate);
        Assert.NotNull(extra.Server);
    }

    [Fact]
    public void Kubeconfig_Problems_NameTheContextAndTheFix()
    {
        var noCurrent = Assert.Throws<KubeconfigException>(() => Resolve(new KubernetesEngineOptions { KubeconfigPath = FixturePath("csharp-client.kubeconfig.no-current-context.yml") }));
        var unknown = Assert.Throws<KubeconfigException>(() => Resolve(new KubernetesEngineOptions { KubeconfigPath = FixturePath("csharp-client.kubeconfig.yml"), Context = "nope" }));
        var missingFiles = Assert.Throws<KubeconfigException>(() => Resolve(new KubernetesEngineOptions { KubeconfigPath = FixturePath("csharp-client.kubeconfig.yml") }));
        var missingFile = Assert.Throws<KubeconfigException>(() => Resolve(new KubernetesEngineOptions { KubeconfigPath = Path.Combine(_dir, "absent") }));

        Assert.Contains("has no current-context. Set KubernetesEngineOptions.Context", noCurrent.Message, StringComparison.Ordinal);
        Assert.Contains("has no context 'nope'", unknown.Message, StringComparison.Ordinal);
        Assert.Contains("'victorian-context'", unknown.Message, StringComparison.Ordinal);
        Assert.Contains("context 'federal-context'", missingFiles.Message, StringComparison.Ordinal);
        Assert.Contains("cannot be loaded", missingFiles.Message, StringComparison.Ordinal);
        Assert.Contains("cannot be read", missingFile.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Kubeconfig_StaticToken_IsSentToTheServer()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        var path = Path.Combine(_dir, "config");
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            current-context: fake
            clusters:
            - name: fake
              cluster:
                server: {server.BaseAddress}
            users:
            - name: me
              user:
                token: s3cret
            contexts:
            - name: fake
              context:
                cluster: fake
                user: me
            """);

        await ListOnceAsync(Resolve(new KubernetesEngineOptions { KubeconfigPath = path }));

        Assert.Equal("Bearer s3cret", server.Requests[^1].Headers["Authorization"]);
    }

    /// <summary>Makes <paramref name="script"/> executable and writes a kubeconfig whose user runs it as an exec credential plugin.</summary>
    private string ExecKubeconfig(FakeKubernetesServer server, string script, string execExtra)
    {
        File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var path = Path.Combine(_dir, "config");
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            current-context: fake
            clusters:
            - name: fake
              cluster:
                server: {server.BaseAddress}
            users:
            - name: me
              user:
                exec:
                  apiVersion: client.authentication.k8s.io/v1
                  command: {script}
                  interactiveMode: Never
            {execExtra}
            contexts:
            - name: fake
              context:
                cluster: fake
                user: me
            """);
        return path;
    }

    [Fact]
    public async Task Kubeconfig_ExecPlugin_GetsAnExecCredentialRequestAndItsTokenIsSent()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        var script = Path.Combine(_dir, "plugin.sh");
        var seen = Path.Combine(_dir, "exec-info.json");
        File.WriteAllText(script, $$$"""
            #!/bin/sh
            printf '%s' "$KUBERNETES_EXEC_INFO" > '{{{seen}}}'
            echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"from-plugin-'"$PLUGIN_SUFFIX"'","expirationTimestamp":"2099-01-01T00:00:00Z"}}'
            """);
        var path = ExecKubeconfig(server, script, """
                  env:
                  - name: PLUGIN_SUFFIX
                    value: abc
            """);

        var connection = Resolve(new KubernetesEngineOptions { KubeconfigPath = path });
        await ListOnceAsync(connection);
        await ListOnceAsync(connection);

        Assert.Equal("Bearer from-plugin-abc", server.Requests[^1].Headers["Authorization"]);
        var info = System.Text.Json.JsonDocument.Parse(File.ReadAllText(seen)).RootElement;
        Assert.Equal("ExecCredential", info.GetProperty("kind").GetString());
        Assert.Equal("client.authentication.k8s.io/v1", info.GetProperty("apiVersion").GetString());
        Assert.False(info.GetProperty("spec").GetProperty("interactive").GetBoolean());
    }

    [Fact]
    public async Task Kubeconfig_ExecPluginTokenRefused_ThePluginRunsAgain_AndTheRequestIsSentOnceMoreWithTheNewToken()
    {
        // The plugin gives no expiry, so its token is kept until the server refuses it (as client-go does).
        await using var server = await FakeKubernetesServer.StartAsync();
        var script = Path.Combine(_dir, "plugin.sh");
        var count = Path.Combine(_dir, "runs");
        File.WriteAllText(script, $$$"""
            #!/bin/sh
            echo x >> '{{{count}}}'
            echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"token-'"$(wc -l < '{{{count}}}' | tr -d ' ')"'"}}'
            """);
        var path = ExecKubeconfig(server, script, "");
        var connection = Resolve(new KubernetesEngineOptions { KubeconfigPath = path });
        await ListOnceAsync(connection);

        server.InjectFault(401, count: 1);
        await ListOnceAsync(connection);

        Assert.Equal(["Bearer token-1", "Bearer token-1", "Bearer token-2"], server.Requests.Select(static r => r.Headers["Authorization"]).TakeLast(3));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Kubeconfig_ExecPluginThatHangs_IsKilledWithWhatItStarted_AtTheTimeLimit_NotWhenAWaitIsCancelled(bool cancel)
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        var (path, runs) = HangingPluginKubeconfig(server);
        var connection = Resolve(new KubernetesEngineOptions { KubeconfigPath = path });
        var time = new TimerSignal();
        using var cancellation = new CancellationTokenSource();

        var token = connection.Token!.GetTokenAsync(time, NullLogger.Instance, cancellation.Token).AsTask();
        var started = await HangingPluginStartedAsync();
        if (cancel)
        {
            // The first caller gives up (its request's time limit): the run goes on, and the next caller waits for it.
            await cancellation.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => token.WaitAsync(K8sTest.Limit));
            Assert.True(started.All(IsAlive), "A caller's cancellation killed the plugin.");
            token = connection.Token!.GetTokenAsync(time, NullLogger.Instance, CancellationToken.None).AsTask();
        }

        await time.WaitForTimerAsync(ExecToken.TimeLimit);
        time.Fake.Advance(ExecToken.TimeLimit);
        var error = await Assert.ThrowsAsync<KubeconfigException>(() => token.WaitAsync(K8sTest.Limit));
        Assert.Contains("did not finish within 60 s", error.Message, StringComparison.Ordinal);
        Assert.Single(File.ReadAllLines(runs));

        // The plugin and the sleep it started are gone (reaped, or at most zombies waiting for it).
        await K8sTest.UntilAsync(() => started.All(static pid => !IsAlive(pid)), "The plugin or its child is still running.");
    }

    [Fact]
    public async Task Kubeconfig_ExecPluginInFlight_IsKilledWithWhatItStarted_WhenTheEngineHostIsDisposed()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        var (path, runs) = HangingPluginKubeconfig(server);

        // A fake clock that never moves: the plugin's own time limit never ends the run, only the disposal can. Disposed
        // again at the end (a no-op) so that a failing assertion before the disposal does not leave the plugin running.
        await using var host = new KubernetesEngineHost(Microsoft.Extensions.Options.Options.Create(new KubernetesEngineOptions { KubeconfigPath = path }), new FakeTimeProvider());
        var (client, _) = await host.ConnectAsync(CancellationToken.None);
        var list = client.ListJobsAsync("default", null, CancellationToken.None);
        var started = await HangingPluginStartedAsync();

        await host.DisposeAsync().AsTask().WaitAsync(K8sTest.Limit);

        await K8sTest.UntilAsync(() => started.All(static pid => !IsAlive(pid)), "The plugin or its child outlived the host.");
        var error = await Assert.ThrowsAsync<KubeconfigException>(() => list.WaitAsync(K8sTest.Limit));
        Assert.Contains("was killed: the Kubernetes engine was disposed", error.Message, StringComparison.Ordinal);
        Assert.Single(File.ReadAllLines(runs));
        Assert.Empty(server.Requests);
    }

    [Fact]
    public async Task Kubeconfig_ExecPluginRunQueuedBeforeTheDisposal_AndReachedAfterIt_LaunchesNothing()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        var (path, runs) = HangingPluginKubeconfig(server);
        var token = (ExecToken)Resolve(new KubernetesEngineOptions { KubeconfigPath = path }).Token!;
        var gate = new PoolGate();

        // The plugin's run is queued on the pool and held there, before it launches anything, until the disposal began.
        var request = gate.Run(() => token.GetTokenAsync(new FakeTimeProvider(), NullLogger.Instance, CancellationToken.None).AsTask());
        await gate.Reached.WaitAsync(K8sTest.Limit);
        var disposal = token.DisposeAsync().AsTask();
        gate.Release();

        await disposal.WaitAsync(K8sTest.Limit);
        var error = await Assert.ThrowsAsync<KubeconfigException>(() => request.WaitAsync(K8sTest.Limit));
        Assert.Contains("was not started: the Kubernetes engine was disposed", error.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(runs), "The plugin was launched after the disposal began.");
    }

    [Fact]
    public async Task Kubeconfig_WatchWaitingForTheExecPlugin_EndsQuietly_WhenTheEngineHostIsDisposed()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        var (path, _) = HangingPluginKubeconfig(server);
        var logs = new RecordingLoggers();

        // A fake clock that never moves: only the disposal ends the plugin's run.
        await using var host = new KubernetesEngineHost(Microsoft.Extensions.Options.Options.Create(new KubernetesEngineOptions { KubeconfigPath = path }), new FakeTimeProvider(), logs);
        var (_, watch) = await host.ConnectAsync(CancellationToken.None);
        _ = watch.StartAsync(CancellationToken.None); // its first lists wait for the plugin's token
        var started = await HangingPluginStartedAsync();

        await host.DisposeAsync().AsTask().WaitAsync(K8sTest.Limit);

        // The watch ended before the token source went: its wait for the token was cancelled, not failed by the disposal
        // (which a watch would log as a failure and retry against a disposed source).
        await K8sTest.UntilAsync(() => started.All(static pid => !IsAlive(pid)), "The plugin or its child outlived the host.");
        Assert.Empty(logs.Entries.Where(static e => e.Level >= Microsoft.Extensions.Logging.LogLevel.Warning).Select(static e => $"{e.Message} {e.Exception}"));
        Assert.Empty(server.Requests);
    }

    /// <summary>
    /// Holds the first pool work item queued by a call made through <see cref="Run{T}"/> (the execution context it
    /// captured carries this gate) before the item runs, until <see cref="Release"/>: an explicit signal for "queued, but
    /// not yet run". The hold is the change notification of an <see cref="AsyncLocal{T}"/>, raised when the pool thread
    /// takes the captured context on.
    /// </summary>
    private sealed class PoolGate
    {
        private readonly AsyncLocal<PoolGate?> _carried;
        private readonly TaskCompletionSource _reached = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _armed = 1;

        public PoolGate() => _carried = new AsyncLocal<PoolGate?>(OnContextChanged);

        public Task Reached => _reached.Task;

        public T Run<T>(Func<T> call)
        {
            _carried.Value = this;
            try
            {
                return call();
            }
            finally
            {
                _carried.Value = null;
            }
        }

        public void Release() => _released.TrySetResult();

        private void OnContextChanged(AsyncLocalValueChangedArgs<PoolGate?> change)
        {
            if (change.ThreadContextChanged && ReferenceEquals(change.CurrentValue, this) && Interlocked.Exchange(ref _armed, 0) == 1)
            {
                _reached.TrySetResult();
                _released.Task.Wait(K8sTest.Limit);
            }
        }
    }

    /// <summary>
    /// A kubeconfig whose exec plugin starts a child (sleep 600) and waits for it, writing its own and the child's pids to
    /// a file (see <see cref="HangingPluginStartedAsync"/>) and a line per run to <c>Runs</c>.
    /// </summary>
    private (string Path, string Runs) HangingPluginKubeconfig(FakeKubernetesServer server)
    {
        var script = Path.Combine(_dir, "plugin.sh");
        var runs = Path.Combine(_dir, "runs");
        File.WriteAllText(script, $$$"""
            #!/bin/sh
            echo run >> '{{{runs}}}'
            sleep 600 &
            echo "$$ $!" > '{{{Path.Combine(_dir, "pids")}}}'
            wait
            """);
        return (ExecKubeconfig(server, script, ""), runs);
    }

    /// <summary>Waits until the plugin of <see cref="HangingPluginKubeconfig"/> started its child; returns both pids.</summary>
    private async Task<List<int>> HangingPluginStartedAsync()
    {
        var pids = Path.Combine(_dir, "pids");
        await K8sTest.UntilAsync(() => File.Exists(pids) && File.ReadAllText(pids).EndsWith('\n'), "The plugin never started.");
        return [.. File.ReadAllText(pids).Split(' ', StringSplitOptions.TrimEntries).Select(int.Parse)];
    }

    /// <summary>Whether the process runs (a zombie waiting to be reaped does not).</summary>
    private static bool IsAlive(int pid)
    {
        var stat = $"/proc/{pid}/stat";
        if (!File.Exists(stat))
        {
            return false;
        }

        try
        {
            var text = File.ReadAllText(stat);
            return text[(text.LastIndexOf(')') + 2)..][0] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Two kubeconfig files in directories of their own, as KUBECONFIG lists them (a missing file first).</summary>
    private (string First, string Second, string List) TwoKubeconfigs()
    {
        var one = Directory.CreateDirectory(Path.Combine(_dir, "one")).FullName;
        var two = Directory.CreateDirectory(Path.Combine(_dir, "two")).FullName;
        var first = Path.Combine(one, "config");
        var second = Path.Combine(two, "config");
        File.WriteAllText(first, """
            apiVersion: v1
            kind: Config
            current-context: prod
            clusters:
            - name: shared
              cluster:
                server: https://one.example:6443
            contexts:
            - name: prod
              context:
                cluster: shared
                user: robot
            - name: with-ca
              context:
                cluster: private
                user: robot
            """);
        File.WriteAllText(second, """
            apiVersion: v1
            kind: Config
            current-context: staging
            clusters:
            - name: shared
              cluster:
                server: https://two.example:6443
            - name: private
              cluster:
                server: https://private.example:6443
                certificate-authority: ca.crt
            users:
            - name: robot
              user:
                token: from-second
            contexts:
            - name: prod
              context:
                cluster: private
                user: robot
            - name: staging
              context:
                cluster: private
                user: robot
            """);
        var list = string.Join(Path.PathSeparator, Path.Combine(_dir, "missing", "config"), first, second);
        return (first, second, list);
    }

    [Fact]
    public async Task Kubeconfig_SeveralFilesInKUBECONFIG_AreMergedAsKubectlDoes_FirstToSetAValueWins()
    {
        var (first, second, list) = TwoKubeconfigs();

        var connection = Resolve(new KubernetesEngineOptions(), new Dictionary<string, string> { ["KUBECONFIG"] = list });

        // current-context and the context 'prod' and cluster 'shared' from the first file; the user only the second has.
        Assert.Equal(new Uri("https://one.example:6443"), connection.Server);
        Assert.Equal("from-second", await connection.Token!.GetTokenAsync(TimeProvider.System, NullLogger.Instance, CancellationToken.None));
        Assert.Equal($"context 'prod' of kubeconfig '{first}{Path.PathSeparator}{second}'", connection.Description);
    }

    [Fact]
    public void Kubeconfig_SeveralFilesInKUBECONFIG_RelativePathsStayRelativeToTheFileThatDefinesThem()
    {
        var (_, second, list) = TwoKubeconfigs();
        using var key = System.Security.Cryptography.ECDsa.Create();
        using var ca = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=second-ca", key, System.Security.Cryptography.HashAlgorithmName.SHA256)
            .CreateSelfSigned(DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch.AddYears(100));
        File.WriteAllText(Path.Combine(Path.GetDirectoryName(second)!, "ca.crt"), ca.ExportCertificatePem());

        var connection = Resolve(new KubernetesEngineOptions { Context = "with-ca" }, new Dictionary<string, string> { ["KUBECONFIG"] = list });

        Assert.Equal(new Uri("https://private.example:6443"), connection.Server);
        Assert.Equal("CN=second-ca", Assert.Single(connection.CertificateAuthority!).Subject);
    }

    [Fact]
    public async Task Kubeconfig_ExecPluginCommandWithADirectory_IsRelativeToTheFileThatDefinesIt_ABareNameIsLookedUpOnPath()
    {
        // The context in one file, the user in another (KUBECONFIG merged), the plugin next to the user's file.
        var one = Directory.CreateDirectory(Path.Combine(_dir, "one")).FullName;
        var two = Directory.CreateDirectory(Path.Combine(_dir, "two")).FullName;
        Directory.CreateDirectory(Path.Combine(two, "bin"));
        var script = Path.Combine(two, "bin", "plugin.sh");
        File.WriteAllText(script, """
            #!/bin/sh
            echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"from-relative-plugin"}}'
            """);
        File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        File.WriteAllText(Path.Combine(one, "config"), """
            current-context: relative
            clusters:
            - name: c
              cluster:
                server: https://one.example:6443
            contexts:
            - name: relative
              context:
                cluster: c
                user: relative
            - name: bare
              context:
                cluster: c
                user: bare
            """);
        File.WriteAllText(Path.Combine(two, "config"), """
            users:
            - name: relative
              user:
                exec:
                  apiVersion: client.authentication.k8s.io/v1
                  command: ./bin/plugin.sh
            - name: bare
              user:
                exec:
                  apiVersion: client.authentication.k8s.io/v1
                  command: kubectl-oidc_login
            """);
        var env = new Dictionary<string, string> { ["KUBECONFIG"] = string.Join(Path.PathSeparator, Path.Combine(one, "config"), Path.Combine(two, "config")) };

        var relative = Assert.IsType<ExecToken>(Resolve(new KubernetesEngineOptions(), env).Token);
        var bare = Assert.IsType<ExecToken>(Resolve(new KubernetesEngineOptions { Context = "bare" }, env).Token);
        await using (relative.ConfigureAwait(false))
        await using (bare.ConfigureAwait(false))
        {
            Assert.Equal(script, relative.Command);
            Assert.Equal("from-relative-plugin", await relative.GetTokenAsync(TimeProvider.System, NullLogger.Instance, CancellationToken.None));
            Assert.Equal("kubectl-oidc_login", bare.Command);
        }
    }

    [Theory]
    [InlineData("")]
    [InlineData("  \n\n")]
    [InlineData("# nothing yet\n")]
    public async Task Kubeconfig_EmptyFileInKUBECONFIG_IsAnEmptyConfig_AndTheOthersAreMerged(string empty)
    {
        var (first, second, _) = TwoKubeconfigs();
        var blank = Path.Combine(_dir, "empty-config");
        File.WriteAllText(blank, empty);
        var list = string.Join(Path.PathSeparator, blank, first, second);

        var connection = Resolve(new KubernetesEngineOptions(), new Dictionary<string, string> { ["KUBECONFIG"] = list });

        Assert.Equal(new Uri("https://one.example:6443"), connection.Server);
        Assert.Equal("from-second", await connection.Token!.GetTokenAsync(TimeProvider.System, NullLogger.Instance, CancellationToken.None));
    }

    [Fact]
    public void Kubeconfig_NoFileOfKUBECONFIGExists_NamesThemAndTheFix()
    {
        var missing = string.Join(Path.PathSeparator, Path.Combine(_dir, "a"), Path.Combine(_dir, "b"));

        var error = Assert.Throws<KubeconfigException>(() => Resolve(new KubernetesEngineOptions(), new Dictionary<string, string> { ["KUBECONFIG"] = missing }));

        Assert.Contains($"'{Path.Combine(_dir, "a")}', '{Path.Combine(_dir, "b")}'", error.Message, StringComparison.Ordinal);
        Assert.Contains("Set KUBECONFIG", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task InCluster_UsesTheServiceAccountAndRereadsTheRotatedToken()
    {
        var account = Path.Combine(_dir, "serviceaccount");
        Directory.CreateDirectory(account);
        File.WriteAllText(Path.Combine(account, "token"), "token-1\n");
        var (_, cluster, _) = Kubeconfig.Load(FixturePath("csharp-client.kubeconfig.yml")).Select("victorian-context");
        File.WriteAllBytes(Path.Combine(account, "ca.crt"), Convert.FromBase64String(Kubeconfig.Scalar(cluster, "certificate-authority-data")!));
        var env = new Dictionary<string, string> { ["KUBERNETES_SERVICE_HOST"] = "10.96.0.1", ["KUBERNETES_SERVICE_PORT"] = "443" };
        var time = new FakeTimeProvider();

        // Nothing configured and KUBERNETES_SERVICE_HOST set: in-cluster.
        var connection = Resolve(new KubernetesEngineOptions { TokenRefreshInterval = TimeSpan.FromMinutes(1) }, env, account);
        var first = await connection.Token!.GetTokenAsync(time, NullLogger.Instance, CancellationToken.None);
        File.WriteAllText(Path.Combine(account, "token"), "token-2\n");
        var cached = await connection.Token.GetTokenAsync(time, NullLogger.Instance, CancellationToken.None);
        time.Advance(TimeSpan.FromMinutes(1));
        var rotated = await connection.Token.GetTokenAsync(time, NullLogger.Instance, CancellationToken.None);

        Assert.Equal(new Uri("https://10.96.0.1:443"), connection.Server);
        Assert.Single(connection.CertificateAuthority!);
        Assert.Equal(("token-1", "token-1", "token-2"), (first, cached, rotated));
        Assert.Equal("in-cluster service account", connection.Description);
    }

    [Fact]
    public void InCluster_WithoutTheEnvironment_NamesTheFix()
    {
        var error = Assert.Throws<KubeconfigException>(() => Resolve(new KubernetesEngineOptions { InCluster = true }));

        Assert.Contains("KUBERNETES_SERVICE_HOST", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DirectServer_SendsTheAccessToken()
    {
        await using var server = await FakeKubernetesServer.StartAsync();

        await ListOnceAsync(Resolve(new KubernetesEngineOptions { Server = server.BaseAddress, AccessToken = "direct" }));

        Assert.Equal("Bearer direct", server.Requests[^1].Headers["Authorization"]);
    }

    [Theory]
    [InlineData(64)]
    [InlineData(int.MaxValue)]
    public void Handler_PingsHttp2Connections_SoThatADeadPeerIsNotReusedForMinutes(int connections)
    {
        // Both pools (plain requests, and watches and log streams) multiplex on one HTTP/2 connection.
        using var handler = Resolve(new KubernetesEngineOptions { Server = new Uri("https://10.0.0.1:6443") }).CreateHandler(TimeProvider.System, NullLogger.Instance, connections);

        var sockets = Assert.IsType<SocketsHttpHandler>(((DelegatingHandler)handler).InnerHandler);
        Assert.Equal(TimeSpan.FromSeconds(30), sockets.KeepAlivePingDelay);
        Assert.Equal(TimeSpan.FromSeconds(15), sockets.KeepAlivePingTimeout);
        Assert.Equal(HttpKeepAlivePingPolicy.Always, sockets.KeepAlivePingPolicy);
    }

    [Theory]
    [InlineData(64)]
    [InlineData(int.MaxValue)]
    public void Handler_OpensItsOwnConnections_SoThatTcpKeepAliveIsOn(int connections)
    {
        // HTTP/1.1 has no pings: a followed log waiting on a connection whose peer vanished is found by TCP keep-alive.
        using var handler = Resolve(new KubernetesEngineOptions { Server = new Uri("https://10.0.0.1:6443") }).CreateHandler(TimeProvider.System, NullLogger.Instance, connections);

        var sockets = Assert.IsType<SocketsHttpHandler>(((DelegatingHandler)handler).InnerHandler);
        Assert.NotNull(sockets.ConnectCallback);
    }

    [Fact]
    public async Task Connect_SetsTcpKeepAlive_30sIdle_10sBetweenProbes_3Probes()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        var accepted = listener.AcceptSocketAsync();

        await using var stream = await KubernetesConnection.ConnectAsync(new System.Net.DnsEndPoint("127.0.0.1", port), CancellationToken.None);
        using var server = await accepted.WaitAsync(K8sTest.Limit);

        var socket = Assert.IsType<System.Net.Sockets.NetworkStream>(stream).Socket;
        Assert.True(socket.Connected);
        Assert.True(socket.NoDelay);
        Assert.NotEqual(0, (int)socket.GetSocketOption(System.Net.Sockets.SocketOptionLevel.Socket, System.Net.Sockets.SocketOptionName.KeepAlive)!);
        Assert.Equal(30, (int)socket.GetSocketOption(System.Net.Sockets.SocketOptionLevel.Tcp, System.Net.Sockets.SocketOptionName.TcpKeepAliveTime)!);
        Assert.Equal(10, (int)socket.GetSocketOption(System.Net.Sockets.SocketOptionLevel.Tcp, System.Net.Sockets.SocketOptionName.TcpKeepAliveInterval)!);
        Assert.Equal(3, (int)socket.GetSocketOption(System.Net.Sockets.SocketOptionLevel.Tcp, System.Net.Sockets.SocketOptionName.TcpKeepAliveRetryCount)!);
    }

    private static async Task ListOnceAsync(KubernetesConnection connection)
    {
        using var http = new HttpClient(connection.CreateHandler(TimeProvider.System, NullLogger.Instance)) { BaseAddress = connection.Server };
        await new KubernetesApiClient(http, TimeProvider.System).ListJobsAsync("default", null, CancellationToken.None);
    }
}
