using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Worker;

/// <summary>The limits of <see cref="ITimer"/> due times on every <see cref="TimeProvider"/>.</summary>
internal static class TimerLimits
{
    /// <summary>The longest due time a timer accepts (0xfffffffe milliseconds, about 49.7 days).</summary>
    public static readonly TimeSpan Max = TimeSpan.FromMilliseconds(0xfffffffe);
}

/// <summary>Why the worker stopped an attempt before the workload returned.</summary>
internal enum StopReason
{
    None = 0,
    Cancelled = 1,
    TimedOut = 2,
    Shutdown = 3,
    LeaseLost = 4,
    Finished = 100,
}

/// <summary>
/// One attempt as its worker tracks it, and, once leased (<see cref="Begin"/>), the context its workload runs with:
/// one object per attempt, every write carrying the attempt's lease. The first of "the workload finished" and "the
/// worker stopped it" wins, atomically: a late cancellation cannot turn a finished attempt into a cancelled one, and the
/// reason stays stable once set.
/// </summary>
[DebuggerDisplay("{Item.Id} {Reason}")]
internal sealed class ActiveAttempt(QueuedJob item, TimeProvider time) : WorkloadContext, IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    // Created on first use: an attempt whose workload returns at once never needs it.
    private TaskCompletionSource? _abandoned;
    private ITimer? _timeoutTimer;
    private ITimer? _graceTimer;
    private int _reason;
    private volatile bool _disposed;

    private JobWorker? _worker;
    private LeasedJob? _leased;
    private ReadOnlyMemory<byte>? _checkpoint;

    public QueuedJob Item { get; } = item;

    /// <summary>Gets the lease, once granted.</summary>
    public JobLease? Lease => _leased?.Lease;

    // The attempt's DI scope, when its engine gave it one (see OpenScope): created at once, or on the first read of Services.
    private IServiceScopeFactory? _scopes;
    private IServiceScope? _scope;

    /// <summary>Gets the exit code the engine reported, if any.</summary>
    public int? ExitCode { get; private set; }

    public override JobId JobId => Current.Lease.JobId;

    public override int Attempt => Current.Lease.Attempt;

    public override long FenceToken => Current.Lease.FenceToken;

    public override JobRequest Request => Current.Request;

    public override ReadOnlyMemory<byte>? Checkpoint => _checkpoint;

    public override CancellationToken CheckpointRequested => Worker.CheckpointRequested;

    public override IServiceProvider Services => _scopes is null ? Worker.Services : (_scope ?? CreateScope()).ServiceProvider;

    public override JsonSerializerOptions SerializerOptions => Worker.SerializerOptions;

    public override TimeProvider TimeProvider => time;

    private LeasedJob Current => _leased ?? throw new InvalidOperationException("The attempt has no lease yet.");

    private JobWorker Worker => _worker ?? throw new InvalidOperationException("The attempt has not begun.");

    /// <summary>
    /// Gives the attempt a DI scope from <paramref name="scopes"/>, which <see cref="Services"/> returns and
    /// <see cref="CloseScopeAsync"/> disposes: created now, or when <paramref name="lazy"/>, on the first read of
    /// <see cref="Services"/> (an attempt whose workload never reads it creates none).
    /// </summary>
    /// <returns>The scope's services, when created now.</returns>
    public IServiceProvider? OpenScope(IServiceScopeFactory scopes, bool lazy)
    {
        _scopes = scopes;
        return lazy ? null : CreateScope().ServiceProvider;
    }

    /// <summary>Disposes the attempt's scope, if it has one; from then on <see cref="Services"/> throws <see cref="ObjectDisposedException"/>.</summary>
    public ValueTask CloseScopeAsync()
    {
        var scope = Interlocked.Exchange(ref _scope, ClosedScope.Instance);
        return scope is null or ClosedScope ? default : new AsyncServiceScope(scope).DisposeAsync();
    }

    private IServiceScope CreateScope()
    {
        var scope = _scopes!.CreateScope();
        var existing = Interlocked.CompareExchange(ref _scope, scope, null);
        if (existing is null)
        {
            return scope;
        }

        // Another thread of the workload created it first, or the attempt already ended.
        scope.Dispose();
        return existing;
    }

    /// <summary>Records the lease just granted: heartbeats renew it from now on.</summary>
    public void Grant(LeasedJob leased) => _leased = leased;

    /// <summary>Makes the attempt its workload's context: from <paramref name="checkpoint"/>, writing through <paramref name="worker"/>.</summary>
    public void Begin(JobWorker worker, ReadOnlyMemory<byte>? checkpoint)
    {
        _worker = worker;
        _checkpoint = checkpoint;
    }

    public override async ValueTask SaveCheckpointAsync(ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken = default)
    {
        ThrowIfLeaseLost();
        await Worker.Checkpoints.SaveAsync(Current, checkpoint, cancellationToken).ConfigureAwait(false);
        _checkpoint = checkpoint;
    }

    public override ValueTask ReportProgressAsync(double? fraction, string? message = null, CancellationToken cancellationToken = default)
    {
        if (fraction is { } f && (double.IsNaN(f) || f < 0 || f > 1))
        {
            throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "Progress is a fraction from 0 to 1.");
        }

        ThrowIfLeaseLost();
        return Worker.Store.ReportProgressAsync(Current.Lease, new JobProgress(fraction, message), cancellationToken);
    }

    public override async ValueTask LogAsync(IReadOnlyList<LogLine> lines, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lines);
        ThrowIfLeaseLost();
        if (lines.Count == 0)
        {
            return;
        }

        var entries = await Worker.Logs.AppendAsync(Current.Lease, lines, cancellationToken).ConfigureAwait(false);
        Worker.PublishLogs(Current, entries);
    }

    public override void ReportExitCode(int exitCode) => ExitCode = exitCode;

    public CancellationToken Token => _cts.Token;

    /// <summary>Completes when the worker gives up waiting for the workload (after the grace period).</summary>
    public Task Abandoned => AbandonedSource.Task;

    private TaskCompletionSource AbandonedSource
        => LazyInitializer.EnsureInitialized(ref _abandoned, static () => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    public StopReason Reason => (StopReason)Volatile.Read(ref _reason);

    public string? Message { get; private set; }

    public TimeSpan? Timeout { get; private set; }

    /// <summary>Stops the attempt for <paramref name="reason"/> unless it already finished or was stopped.</summary>
    /// <returns><see langword="true"/> when this call stopped it.</returns>
    public bool TryStop(StopReason reason, string? message, TimeSpan grace)
    {
        if (Interlocked.CompareExchange(ref _reason, (int)reason, (int)StopReason.None) != (int)StopReason.None)
        {
            return false;
        }

        Message = message;
        try
        {
            // Callbacks the workload registered run on the thread pool, never on the caller's (heartbeat, timer) thread.
            _ = _cts.CancelAsync();
        }
        catch (ObjectDisposedException)
        {
            // The attempt ended and was disposed while this stop was on its way; there is nothing left to stop.
            return false;
        }

        if (grace <= TimeSpan.Zero)
        {
            AbandonedSource.TrySetResult();
        }
        else
        {
            var timer = time.CreateTimer(static s => ((TaskCompletionSource)s!).TrySetResult(), AbandonedSource, grace, System.Threading.Timeout.InfiniteTimeSpan);
            _graceTimer = timer;
            if (_disposed)
            {
                timer.Dispose();
            }
        }

        return true;
    }

    /// <summary>
    /// Marks the attempt finished, unless it was stopped first. Idempotent: later calls return what the first returned,
    /// so the instant the workload's task completed (a synchronous continuation calls this) decides, not when the
    /// worker got round to looking.
    /// </summary>
    /// <returns>The reason it was stopped, or <see cref="StopReason.None"/> when it finished on its own.</returns>
    public StopReason Finish()
    {
        // _reason leaves None exactly once, so the first call's answer can be read back from it.
        var previous = (StopReason)Interlocked.CompareExchange(ref _reason, (int)StopReason.Finished, (int)StopReason.None);
        return previous == StopReason.Finished ? StopReason.None : previous;
    }

    /// <summary>Gets whether the attempt ended and its outcome was handled: its context accepts no more writes.</summary>
    public bool IsClosed => _disposed;

    public void ArmTimeout(TimeSpan timeout, TimeSpan grace)
    {
        Timeout = timeout;
        if (timeout > TimerLimits.Max)
        {
            // Beyond what a timer can hold (about 49 days): in practice no timeout.
            return;
        }

        _timeoutTimer = time.CreateTimer(
            static s =>
            {
                var (attempt, grace) = ((ActiveAttempt, TimeSpan))s!;
                attempt.TryStop(StopReason.TimedOut, null, grace);
            },
            (this, grace),
            timeout,
            System.Threading.Timeout.InfiniteTimeSpan);
    }

    private void ThrowIfLeaseLost()
    {
        var lease = Current.Lease;
        if (Reason == StopReason.LeaseLost)
        {
            throw new StaleFenceTokenException(lease.JobId, lease.FenceToken, currentToken: null, "the lease could not be renewed");
        }

        if (IsClosed)
        {
            throw new StaleFenceTokenException(lease.JobId, lease.FenceToken, currentToken: null, "the attempt already ended");
        }
    }

    public void Dispose()
    {
        Finish();
        _disposed = true;
        _timeoutTimer?.Dispose();
        _graceTimer?.Dispose();
        _cts.Dispose();
    }
}

/// <summary>Stands for the scope of an attempt that ended: its services are disposed.</summary>
file sealed class ClosedScope : IServiceScope, IServiceProvider
{
    public static readonly ClosedScope Instance = new();

    public IServiceProvider ServiceProvider => this;

    public object? GetService(Type serviceType)
        => throw new ObjectDisposedException(nameof(IServiceProvider), "The attempt ended: its DI scope is disposed.");

    public void Dispose()
    {
    }
}
