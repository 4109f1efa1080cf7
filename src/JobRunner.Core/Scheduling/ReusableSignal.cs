using System.Threading.Tasks.Sources;

namespace JobRunner.Scheduling;

/// <summary>
/// A wake-up for one waiter at a time that allocates nothing per wait: the waiter takes <see cref="Wait"/>'s value
/// task and awaits it; whoever holds the registration calls <see cref="Set"/> exactly once. The owner guarantees that
/// one <see cref="Set"/> matches each registration (it hands registrations out under a lock or with an atomic flag).
/// Continuations run on the thread pool, never on the setter's thread.
/// </summary>
internal sealed class ReusableSignal : IValueTaskSource
{
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };

    /// <summary>Gets the wait for the current registration; take it before the registration is published.</summary>
    public ValueTask Wait() => new(this, _core.Version);

    /// <summary>Completes the current registration's wait.</summary>
    public void Set() => _core.SetResult(true);

    void IValueTaskSource.GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            // Ready for the next registration: the waiter has observed this one.
            _core.Reset();
        }
    }

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
