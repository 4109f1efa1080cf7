// Compiled into each package that arms timers from configured times (Core, Kubernetes, PostgreSQL, Testing's fake clock): one
// source, no public type.
namespace JobRunner;

/// <summary>The limits of <see cref="ITimer"/> due times on every <see cref="TimeProvider"/>.</summary>
internal static class TimerLimits
{
    /// <summary>The longest due time a timer accepts (0xfffffffe milliseconds, about 49.7 days).</summary>
    public static readonly TimeSpan Max = TimeSpan.FromMilliseconds(0xfffffffe);
}
