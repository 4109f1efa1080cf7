using System.Diagnostics;

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
/// One attempt as its worker tracks it. The first of "the workload finished" and "the worker stopped it" wins, atomically:
/// a late cancellation cannot turn a finished attempt into a cancelled one, and the reason stays stable once set.
/// </summary>
[DebuggerDisplay("{Item.Id} {Reason}")]
internal sealed class ActiveAttempt(QueuedJob item, TimeProvider time) : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    // Created on first use: an attempt whose workload returns at once never needs it.
    private TaskCompletionSource? _abandoned;
    private ITimer? _timeoutTimer;
    private ITimer? _graceTimer;
    private int _reason;
    private volatile bool _disposed;

    public QueuedJob Item { get; } = item;

    public JobLease? Lease { get; set; }

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

    public void Dispose()
    {
        Finish();
        _disposed = true;
        _timeoutTimer?.Dispose();
        _graceTimer?.Dispose();
        _cts.Dispose();
    }
}
