using JobRunner.Testing;

namespace JobRunner.Kubernetes.Tests.Support;

/// <summary>A fake clock that also tells the test when a timer with a given due time is created (e.g. a Retry-After wait).</summary>
public sealed class TimerSignal : TimeProvider
{
    private readonly Lock _lock = new();
    private readonly List<TimeSpan> _created = [];
    private readonly List<(TimeSpan Due, TaskCompletionSource Done)> _waiters = [];

    public FakeTimeProvider Fake { get; } = new();

    /// <summary>Completes once a timer due in <paramref name="due"/> has been created (now or before).</summary>
    public Task WaitForTimerAsync(TimeSpan due)
    {
        lock (_lock)
        {
            if (_created.Contains(due))
            {
                return Task.CompletedTask;
            }

            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((due, done));
            return done.Task.WaitAsync(TimeSpan.FromSeconds(30));
        }
    }

    public override DateTimeOffset GetUtcNow() => Fake.GetUtcNow();

    public override long GetTimestamp() => Fake.GetTimestamp();

    public override long TimestampFrequency => Fake.TimestampFrequency;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = Fake.CreateTimer(callback, state, dueTime, period);
        lock (_lock)
        {
            _created.Add(dueTime);
            foreach (var (due, done) in _waiters.Where(w => w.Due == dueTime))
            {
                done.TrySetResult();
            }
        }

        return timer;
    }
}
