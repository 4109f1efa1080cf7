using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Worker;

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
/// reason stays stable once set. Allocated per job, so it keeps only what every attempt needs; the rest (see
/// <see cref="Extras"/>) is created by the few attempts that use it.
/// </summary>
[DebuggerDisplay("{Item.Id} {Reason}")]
internal sealed class ActiveAttempt(QueuedJob item, JobWorker worker, CancellationTokenSource? tokens = null) : WorkloadContext, IDisposable
{
    // The slot's source when it has one to reuse (see Close).
    private readonly CancellationTokenSource _cts = tokens ?? new();
    // Created on first use: an attempt whose workload returns at once never needs it.
    private TaskCompletionSource? _abandoned;
    private ITimer? _timeoutTimer;
    private Extras? _extras;
    private int _reason;
    private int _closed;
    private volatile bool _disposed;

    private LeasedJob? _leased;
    // Set only when the attempt's checkpoint is not the lease's: loaded from a checkpoint store, or saved by the workload.
    private StrongBox<ReadOnlyMemory<byte>?>? _checkpoint;

    // The attempt's DI scope (see OpenScope): null without one, LazyScope until a lazy scope is created, then the scope,
    // and ClosedScope once the attempt ended. (Not typed by interface: the root scope is also the scope factory.)
    private object? _scope;

    public QueuedJob Item { get; } = item;

    /// <summary>Gets the lease, once granted.</summary>
    public JobLease? Lease => _leased?.Lease;

    /// <summary>Gets the exit code the engine reported, if any.</summary>
    public int? ExitCode => _extras?.ExitCode;

    /// <summary>
    /// Gets or sets the workload's code when the attempt was abandoned while it still ran (it ignored its token past the
    /// grace period); <see langword="null"/> otherwise.
    /// </summary>
    public Task? StillRunning
    {
        get => _extras?.StillRunning;
        set => Extra.StillRunning = value;
    }

    public override JobId JobId => Current.Lease.JobId;

    public override int Attempt => Current.Lease.Attempt;

    public override long FenceToken => Current.Lease.FenceToken;

    public override JobRequest Request => Current.Request;

    public override ReadOnlyMemory<byte>? Checkpoint => _checkpoint is { } own ? own.Value : _leased?.Checkpoint;

    public override CancellationToken CheckpointRequested => worker.CheckpointRequested;

    public override IServiceProvider Services => _scope switch
    {
        null => worker.Services,
        LazyScope => CreateScope().ServiceProvider,
        var scope => ((IServiceScope)scope).ServiceProvider,
    };

    public override JsonSerializerOptions SerializerOptions => worker.SerializerOptions;

    public override TimeProvider TimeProvider => worker.Time;

    private LeasedJob Current => _leased ?? throw new InvalidOperationException("The attempt has no lease yet.");

    private Extras Extra
    {
        get
        {
            var extras = Volatile.Read(ref _extras);
            return extras ?? Interlocked.CompareExchange(ref _extras, extras = new Extras(), null) ?? extras;
        }
    }

    /// <summary>
    /// Gives the attempt a DI scope, which <see cref="Services"/> returns and <see cref="CloseScopeAsync"/> disposes:
    /// created now, or when <paramref name="lazy"/>, on the first read of <see cref="Services"/> (an attempt whose
    /// workload never reads it creates none).
    /// </summary>
    /// <returns>The scope's services, when created now.</returns>
    public IServiceProvider? OpenScope(bool lazy)
    {
        _scope = LazyScope.Instance;
        return lazy ? null : CreateScope().ServiceProvider;
    }

    /// <summary>Disposes the attempt's scope, if it has one; from then on <see cref="Services"/> throws <see cref="ObjectDisposedException"/>.</summary>
    public ValueTask CloseScopeAsync()
    {
        var scope = Interlocked.Exchange(ref _scope, ClosedScope.Instance);
        return scope is null or LazyScope or ClosedScope ? default : new AsyncServiceScope((IServiceScope)scope).DisposeAsync();
    }

    private IServiceScope CreateScope()
    {
        var scope = worker.Scopes.CreateScope();
        var seen = Interlocked.CompareExchange(ref _scope, scope, LazyScope.Instance);
        if (seen == LazyScope.Instance)
        {
            return scope;
        }

        // Another thread of the workload created it first, or the attempt already ended.
        scope.Dispose();
        return (IServiceScope)seen!;
    }

    /// <summary>Records the lease just granted: heartbeats renew it from now on.</summary>
    public void Grant(LeasedJob leased) => _leased = leased;

    /// <summary>Makes the attempt its workload's context, starting from <paramref name="checkpoint"/>.</summary>
    public void Begin(ReadOnlyMemory<byte>? checkpoint)
    {
        if (!Nullable.Equals(checkpoint, Current.Checkpoint))
        {
            _checkpoint = new(checkpoint);
        }
    }

    public override async ValueTask SaveCheckpointAsync(ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken = default)
    {
        ThrowIfLeaseLost();
        await worker.Checkpoints.SaveAsync(Current, checkpoint, cancellationToken).ConfigureAwait(false);

        // A copy: the caller may reuse its buffer, and Checkpoint must stay what was saved.
        _checkpoint = new(checkpoint.ToArray());
    }

    public override ValueTask ReportProgressAsync(double? fraction, string? message = null, CancellationToken cancellationToken = default)
    {
        if (fraction is { } f && (double.IsNaN(f) || f < 0 || f > 1))
        {
            throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "Progress is a fraction from 0 to 1.");
        }

        ThrowIfLeaseLost();
        return worker.Store.ReportProgressAsync(Current.Lease, new JobProgress(fraction, message), cancellationToken);
    }

    public override async ValueTask LogAsync(IReadOnlyList<LogLine> lines, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lines);
        ThrowIfLeaseLost();
        if (lines.Count == 0)
        {
            return;
        }

        var entries = await worker.Logs.AppendAsync(Current.Lease, lines, cancellationToken).ConfigureAwait(false);
        worker.PublishLogs(Current, entries);
    }

    public override void ReportExitCode(int exitCode) => Extra.ExitCode = exitCode;

    public CancellationToken Token => _cts.Token;

    /// <summary>Completes when the worker gives up waiting for the workload (after the grace period).</summary>
    public Task Abandoned => AbandonedSource.Task;

    private TaskCompletionSource AbandonedSource
        => LazyInitializer.EnsureInitialized(ref _abandoned, static () => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    public StopReason Reason => (StopReason)Volatile.Read(ref _reason);

    /// <summary>Gets the message the attempt was stopped with, if any.</summary>
    public string? Message => _extras?.Message;

    /// <summary>Stops the attempt for <paramref name="reason"/> unless it already finished or was stopped.</summary>
    /// <returns><see langword="true"/> when this call stopped it.</returns>
    public bool TryStop(StopReason reason, string? message, TimeSpan grace)
    {
        // The message goes in before the reason, so that whoever reads the reason finds its message. The first stop to
        // bring one keeps it, even if another stop (or the workload's finish) wins the reason: only a cancellation's
        // message is read, and any cancellation's reason will do.
        if (message is not null && Volatile.Read(ref _reason) == (int)StopReason.None)
        {
            Interlocked.CompareExchange(ref Extra.Message, message, null);
        }

        if (Interlocked.CompareExchange(ref _reason, (int)reason, (int)StopReason.None) != (int)StopReason.None)
        {
            return false;
        }

        // Callbacks the workload registered run on the thread pool, never on the caller's (heartbeat, timer) thread.
        var cancelling = _cts.CancelAsync();
        if (cancelling.IsFaulted)
        {
            // The attempt ended and its source was disposed while this stop was on its way (a disposed source reports
            // that through the task): there is nothing left to stop.
            _ = cancelling.Exception;
            return false;
        }

        // Kept until the callbacks ran: disposing the source before then would drop them (see Close).
        Extra.Cancelling = cancelling;

        if (grace <= TimeSpan.Zero)
        {
            AbandonedSource.TrySetResult();
        }
        else
        {
            var timer = worker.Time.CreateTimer(static s => ((TaskCompletionSource)s!).TrySetResult(), AbandonedSource, grace, System.Threading.Timeout.InfiniteTimeSpan);
            Extra.GraceTimer = timer;
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
        if (timeout > TimerLimits.Max)
        {
            // Beyond what a timer can hold (about 49 days): in practice no timeout.
            return;
        }

        _timeoutTimer = worker.Time.CreateTimer(
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

    public void Dispose() => Close()?.Dispose();

    /// <summary>Ends the attempt, once: its context accepts no more writes and its timers stop.</summary>
    /// <returns>
    /// The attempt's cancellation source, reset, when the next attempt may reuse it: the attempt finished without being
    /// stopped, so no stop cancelled it and none can any more (a stop must win <see cref="Reason"/> first). Otherwise
    /// <see langword="null"/>, and the source is disposed.
    /// </returns>
    public CancellationTokenSource? Close()
    {
        // Once only: a second call must not reset a source the slot's next attempt already uses.
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return null;
        }

        Finish();
        _disposed = true;
        _timeoutTimer?.Dispose();
        _extras?.GraceTimer?.Dispose();
        if (Reason == StopReason.Finished && _cts.TryReset())
        {
            return _cts;
        }

        if (_extras?.Cancelling is { IsCompleted: false } cancelling)
        {
            // A stop's callbacks still run on the thread pool. A source disposed before they ran never runs them, and a
            // workload abandoned after its grace period (or at once, when its lease was lost) would never see its token
            // cancelled, and would run on: the source is disposed once they ran.
            // A callback that threw faults that task: observed here, not left to the finalizer.
            _ = cancelling.ContinueWith(
                static (t, s) =>
                {
                    _ = t.Exception;
                    ((CancellationTokenSource)s!).Dispose();
                },
                _cts,
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
            return null;
        }

        _ = _extras?.Cancelling?.Exception;
        _cts.Dispose();
        return null;
    }

    /// <summary>What only some attempts set: a stop message, a grace timer, an exit code.</summary>
    private sealed class Extras
    {
        public string? Message;

        public ITimer? GraceTimer { get; set; }

        /// <summary>Gets or sets the running of a stop's cancellation callbacks.</summary>
        public Task? Cancelling { get; set; }

        public int? ExitCode { get; set; }

        public Task? StillRunning { get; set; }
    }
}

/// <summary>Stands for the scope of an attempt whose workload has not read its services yet.</summary>
file sealed class LazyScope
{
    public static readonly LazyScope Instance = new();
}

/// <summary>Stands for the scope of an attempt that ended: its services are disposed.</summary>
file sealed class ClosedScope : IServiceScope, IKeyedServiceProvider
{
    public static readonly ClosedScope Instance = new();

    public IServiceProvider ServiceProvider => this;

    public object? GetService(Type serviceType) => throw Disposed();

    public object? GetKeyedService(Type serviceType, object? serviceKey) => throw Disposed();

    public object GetRequiredKeyedService(Type serviceType, object? serviceKey) => throw Disposed();

    public void Dispose()
    {
    }

    private static ObjectDisposedException Disposed() => new(nameof(IServiceProvider), "The attempt ended: its DI scope is disposed.");
}
