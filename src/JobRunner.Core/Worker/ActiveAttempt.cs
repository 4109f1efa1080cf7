using System.Diagnostics;

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
/// One attempt as its worker tracks it. The first of "the workload finished" and "the worker stopped it" wins, atomically:
/// a late cancellation cannot turn a finished attempt into a cancelled one, and the reason stays stable once set.
/// </summary>
[DebuggerDisplay("{Item.Id} {Reason}")]
internal sealed class ActiveAttempt(QueuedJob item, TimeProvider time) : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly TaskCompletionSource _abandoned = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private ITimer? _timeoutTimer;
    private ITimer? _graceTimer;
    private int _reason;

    public QueuedJob Item { get; } = item;

    public JobLease? Lease { get; set; }

    public CancellationToken Token => _cts.Token;

    /// <summary>Completes when the worker gives up waiting for the workload (after the grace period).</summary>
    public Task Abandoned => _abandoned.Task;

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
            _cts.Cancel();
        }
        catch (AggregateException)
        {
            // A workload's cancellation callback threw; the attempt is stopping anyway.
        }

        if (grace <= TimeSpan.Zero)
        {
            _abandoned.TrySetResult();
        }
        else
        {
            _graceTimer = time.CreateTimer(static s => ((TaskCompletionSource)s!).TrySetResult(), _abandoned, grace, System.Threading.Timeout.InfiniteTimeSpan);
        }

        return true;
    }

    /// <summary>Marks the attempt finished, unless it was stopped first.</summary>
    /// <returns>The reason it was stopped, or <see cref="StopReason.None"/> when it finished on its own.</returns>
    public StopReason Finish()
    {
        var previous = Interlocked.CompareExchange(ref _reason, (int)StopReason.Finished, (int)StopReason.None);
        return (StopReason)previous;
    }

    public void ArmTimeout(TimeSpan timeout, TimeSpan grace)
    {
        Timeout = timeout;
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
        _timeoutTimer?.Dispose();
        _graceTimer?.Dispose();
        _cts.Dispose();
    }
}
