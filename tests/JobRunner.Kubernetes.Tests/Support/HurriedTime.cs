namespace JobRunner.Kubernetes.Tests.Support;

/// <summary>
/// The system clock, except that a timer due in at most <see cref="Threshold"/> fires at once: back-off pauses pass
/// without waiting, while request time limits (a minute) and watch timeouts (minutes) keep their real length.
/// </summary>
public sealed class HurriedTime : TimeProvider
{
    public static readonly TimeSpan Threshold = TimeSpan.FromSeconds(30);

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        => System.CreateTimer(callback, state, dueTime != Timeout.InfiniteTimeSpan && dueTime <= Threshold ? TimeSpan.Zero : dueTime, period);
}
