namespace JobRunner.Kubernetes.Tests.Support;

/// <summary>
/// Like <see cref="HurriedTime"/>, a timer due in at most <see cref="HurriedTime.Threshold"/> fires at once; and the clock
/// moves on by its due time, as if it had been waited for: back-offs pass without waiting, yet count as the time they are.
/// </summary>
public sealed class JumpingTime : TimeProvider
{
    private long _skipped; // ticks

    public override DateTimeOffset GetUtcNow() => System.GetUtcNow() + TimeSpan.FromTicks(Interlocked.Read(ref _skipped));

    public override long GetTimestamp()
        => System.GetTimestamp() + (long)(Interlocked.Read(ref _skipped) * (System.TimestampFrequency / (double)TimeSpan.TicksPerSecond));

    public override long TimestampFrequency => System.TimestampFrequency;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        if (dueTime != Timeout.InfiniteTimeSpan && dueTime > TimeSpan.Zero && dueTime <= HurriedTime.Threshold)
        {
            Interlocked.Add(ref _skipped, dueTime.Ticks);
            dueTime = TimeSpan.Zero;
        }

        return System.CreateTimer(callback, state, dueTime, period);
    }
}
