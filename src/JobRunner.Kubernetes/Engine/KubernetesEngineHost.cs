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
    private readonly IJobStore? _store;
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _sweepStart = new();
    private (KubernetesApiClient Client, NamespaceWatch Watch, HttpClient Http, HttpClient Streams, ITokenSource? Token)? _connection;
    private Task? _sweeps;
    private int _disposed;

    /// <param name="options">The options.</param>
    /// <param name="time">The clock.</param>
    /// <param name="loggers">The loggers.</param>
    /// <param name="store">The job store, to find Jobs left running for finished jobs; none are looked for without it.</param>
    public KubernetesEngineHost(IOptions<KubernetesEngineOptions> options, TimeProvider time, ILoggerFactory? loggers = null, IJobStore? store = null)
    {
        Options = options.Value;
        Time = time;
        Logger = (loggers ?? NullLoggerFactory.Instance).CreateLogger("JobRunner.Kubernetes");
        _store = store;
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
            // Disposed meanwhile: a connection made now would never be disposed (its token source, a plugin, included).
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) == 1, this);
            if (_connection is null)
            {
                var connection = KubernetesConnection.Resolve(Options, Environment.GetEnvironmentVariable);
                // Two pools: watches and followed logs hold a connection each for their life on HTTP/1.1, so they get
                // a pool without a limit, and cannot starve the creates, deletes and lists of the other.
                var http = new HttpClient(connection.CreateHandler(Time, Logger)) { BaseAddress = connection.Server, Timeout = Timeout.InfiniteTimeSpan };
                var streams = new HttpClient(connection.CreateHandler(Time, Logger, int.MaxValue)) { BaseAddress = connection.Server, Timeout = Timeout.InfiniteTimeSpan };
                var client = new KubernetesApiClient(http, Time, streams: streams);
                _connection = (client, new NamespaceWatch(client, Options.Namespace, Time, Logger), http, streams, connection.Token);
            }

            return (_connection.Value.Client, _connection.Value.Watch);
        }
        finally
        {
            _connect.Release();
        }
    }

    /// <summary>
    /// Starts looking for Jobs left running for finished jobs every <see cref="KubernetesEngineOptions.OrphanSweepInterval"/>
    /// (once; at host start, whether or not this host runs a Kubernetes job): the first look connects and watches.
    /// </summary>
    public void StartSweeping()
    {
        if (_store is not null && Options.OrphanSweepInterval is { } interval && Volatile.Read(ref _disposed) == 0)
        {
            lock (_sweepStart)
            {
                if (_sweeps is null)
                {
                    // The timer starts now, not when the loop first runs.
                    var timer = new PeriodicTimer(interval, Time);
                    _sweeps = Task.Run(() => SweepEveryAsync(timer, interval, _stop.Token), CancellationToken.None);
                }
            }
        }
    }

    /// <summary>
    /// Deletes the active Jobs, older than <paramref name="createdBefore"/> and watched by no attempt of this host, whose
    /// jobs the store has finished: nothing would ever stop them (a job cancelled while its Job, left running by a
    /// graceful stop, waited for the next owner). A job the store does not know is left alone (another deployment's).
    /// </summary>
    /// <returns>How many Jobs were deleted.</returns>
    internal async Task<int> SweepOnceAsync(DateTimeOffset createdBefore, CancellationToken cancellationToken)
    {
        if (_store is null || _connection is not { } connection)
        {
            return 0;
        }

        var deleted = 0;
        foreach (var (name, jobId) in connection.Watch.Unattached(createdBefore))
        {
            // Looked up again just before the delete: an attempt of this host may have re-attached meanwhile (one of
            // another host, after a manual retry between the read and the delete, is not seen: it fails and runs again).
            if (await _store.GetAsync(jobId, cancellationToken).ConfigureAwait(false) is not { } job || !job.State.IsTerminal() || connection.Watch.IsAttached(name))
            {
                continue;
            }

            try
            {
                await connection.Client.DeleteJobAsync(Options.Namespace, name, cancellationToken).ConfigureAwait(false);
                Log.OrphanDeleted(Logger, jobId, name, job.State);
                deleted++;
            }
            catch (KubernetesApiException e) when (e.IsNotFound)
            {
                // Gone meanwhile.
            }
        }

        return deleted;
    }

    private async Task SweepEveryAsync(PeriodicTimer timer, TimeSpan interval, CancellationToken stop)
    {
        using var owned = timer;
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                try
                {
                    var (_, watch) = await ConnectAsync(stop).ConfigureAwait(false);
                    await watch.StartAsync(stop).ConfigureAwait(false);
                    await SweepOnceAsync(Time.GetUtcNow() - interval, stop).ConfigureAwait(false);
                }
#pragma warning disable CA1031 // The sweep must outlive any failure: it logs and looks again at the next tick.
                catch (Exception e) when (!stop.IsCancellationRequested)
#pragma warning restore CA1031
                {
                    Log.SweepFailed(Logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
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

        await _stop.CancelAsync().ConfigureAwait(false);
        if (_sweeps is { } sweeps)
        {
            await sweeps.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        _stop.Dispose();

        // A connection being made finishes first (it is stored under this lock); one asked for later sees the disposal.
        await _connect.WaitAsync().ConfigureAwait(false);
        var made = _connection;
        _connect.Release();
        if (made is { } connection)
        {
            // The watch first: its loops end (a wait for a token ends with them) before the token source they use is
            // disposed, so that a watch reconnecting meanwhile does not fail on a disposed source.
            await connection.Watch.DisposeAsync().ConfigureAwait(false);

            // Then an exec credential plugin still in flight (for a request still under way) is killed.
            if (connection.Token is IAsyncDisposable token)
            {
                await token.DisposeAsync().ConfigureAwait(false);
            }

            connection.Http.Dispose();
            connection.Streams.Dispose();
        }

        _connect.Dispose();
    }
}
