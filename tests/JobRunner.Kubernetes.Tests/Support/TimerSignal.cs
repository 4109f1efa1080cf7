using JobRunner.Testing;

namespace JobRunner.Kubernetes.Tests.Support;

/// <summary>A fake clock that also tells the test when a timer is created, and for how long (e.g. a Retry-After wait).</summary>
public sealed class TimerSignal : TimeProvider
{
    private readonly Lock _lock = new();
    private TaskCompletionSource<TimeSpan> _next = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public FakeTimeProvider Fake { get; } = new();

    /// <summary>Completes with the due time of the next timer created with a finite due time.</summary>
    public Task<TimeSpan> NextTimer
    {
        get
        {
            lock (_lock)
            {
                return _next.Task.WaitAsync(TimeSpan.FromSeconds(30));
            }
        }
    }

    public override DateTimeOffset GetUtcNow() => Fake.GetUtcNow();

    public override long GetTimestamp() => Fake.GetTimestamp();

    public override long TimestampFrequency => Fake.TimestampFrequency;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = Fake.CreateTimer(callback, state, dueTime, period);
        if (dueTime != Timeout.InfiniteTimeSpan)
        {
            TaskCompletionSource<TimeSpan> current;
            lock (_lock)
            {
                current = _next;
                _next = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            current.TrySetResult(dueTime);
        }

        return timer;
    }
}
