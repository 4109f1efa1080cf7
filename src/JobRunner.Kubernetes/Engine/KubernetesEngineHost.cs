using JobRunner.Kubernetes.Client;
using JobRunner.Kubernetes.Connection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace JobRunner.Kubernetes.Engine;

/// <summary>
/// What every Kubernetes engine of a host shares: the connection (resolved once, on first use), the REST client and the
/// namespace's watch. It is the <see cref="IContainerEngineProvider"/> that <c>UseKubernetes</c> registers.
/// </summary>
internal sealed class KubernetesEngineHost : IContainerEngineProvider, IAsyncDisposable, IDisposable
{
    private readonly SemaphoreSlim _connect = new(1, 1);
    private (KubernetesApiClient Client, NamespaceWatch Watch, HttpClient Http)? _connection;
    private int _disposed;

    public KubernetesEngineHost(IOptions<KubernetesEngineOptions> options, TimeProvider time, ILoggerFactory? loggers = null)
    {
        Options = options.Value;
        Time = time;
        Logger = (loggers ?? NullLoggerFactory.Instance).CreateLogger("JobRunner.Kubernetes");
    }

    public KubernetesEngineOptions Options { get; }

    public TimeProvider Time { get; }

    public ILogger Logger { get; }

    public IExecutionEngine CreateEngine(Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> resolveSpec) => new KubernetesEngine(this, resolveSpec);

    public async ValueTask<(KubernetesApiClient Client, NamespaceWatch Watch)> ConnectAsync(CancellationToken cancellationToken)
    {
        if (_connection is { } ready)
        {
            return (ready.Client, ready.Watch);
        }

        await _connect.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_connection is null)
            {
                var connection = KubernetesConnection.Resolve(Options, Environment.GetEnvironmentVariable);
                var http = new HttpClient(connection.CreateHandler(Time, Logger)) { BaseAddress = connection.Server, Timeout = Timeout.InfiniteTimeSpan };
                var client = new KubernetesApiClient(http, Time);
                _connection = (client, new NamespaceWatch(client, Options.Namespace, Time, Logger), http);
            }

            return (_connection.Value.Client, _connection.Value.Watch);
        }
        finally
        {
            _connect.Release();
        }
    }

    /// <summary>For containers disposed synchronously: stops the watch and waits for it.</summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        if (_connection is { } connection)
        {
            await connection.Watch.DisposeAsync().ConfigureAwait(false);
            connection.Http.Dispose();
        }

        _connect.Dispose();
    }
}
